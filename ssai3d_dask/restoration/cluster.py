"""Dask clients, GPU resources and the per-worker model cache."""

from __future__ import annotations

import logging
import os
import threading

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.settings import BATCH_SYSTEMS

logger = logging.getLogger(__name__)

_CACHE: dict = {}
_LOCK = threading.Lock()


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover
        return 0


def default_workers(method: str | None = None) -> int:
    """LocalCluster workers by default: one per GPU; else what the method asks for on this machine's cores
    (:meth:`~ssai3d_dask.restoration.methods.RestorationMethod.default_workers`: one per core for
    interpolation, min(4, cores // 2) for the others), at least 1."""
    from ssai3d_dask.restoration.methods import DEFAULT_METHOD, get_method

    return gpu_count() or max(1, get_method(method or DEFAULT_METHOD).default_workers(os.cpu_count() or 1))


def make_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int | None = None,
                memory_limit: str | None = None, processes: bool = True):
    """Connect to ``scheduler`` (an address or a scheduler file) or start an embedded LocalCluster sized to
    this machine.

    Without GPUs: ``workers`` defaults to min(4, cores // 2) (at least 1), each
    with ``threads_per_worker`` (default 1; torch uses the remaining cores).
    With GPUs: one worker per GPU, each advertising a ``GPU`` resource.
    """
    from ssai3d_dask.settings import ClusterSettings

    if scheduler:
        return connect(ClusterSettings(cluster=scheduler))
    return connect(ClusterSettings(workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit),
                   processes=processes)


def connect(settings, method: str | None = None, device: str = "cpu", processes: bool = True):
    """A client on the cluster ``settings`` names (:class:`~ssai3d_dask.settings.ClusterSettings`): a
    LocalCluster, batch jobs through dask-jobqueue (:func:`batch_cluster`), or a running scheduler."""
    from distributed import Client

    # distributed configures its loggers when first imported (after the CLI set levels): keep it quiet
    # unless we are debugging.
    if not logger.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if settings.cluster == "local":
        return _local_client(settings, method, processes)
    if settings.cluster in BATCH_SYSTEMS:
        cluster = batch_cluster(settings, device)
        client = Client(cluster)
        logger.info("%s: %s jobs submitted; dashboard %s", settings.cluster,
                    f"up to {settings.jobs or 1} (adaptive)" if settings.adaptive else settings.jobs or 1,
                    client.dashboard_link)
        return client
    target = settings.cluster
    try:
        client = (Client(scheduler_file=target, timeout="10s") if target.endswith(".json")
                  else Client(target, timeout="10s"))
    except (OSError, TimeoutError, ValueError) as exc:
        raise SettingsError(f"cannot reach the Dask scheduler at {target} ({type(exc).__name__}); check the "
                            f"address and that the scheduler runs, or drop --cluster for a local cluster") from exc
    logger.info("connected to %s (dashboard %s)", target, client.dashboard_link)
    return client


def batch_cluster(settings, device: str = "cpu", start: bool = True):
    """A dask-jobqueue cluster for ``settings.cluster`` (slurm, pbs or lsf), configured by the user's
    ``jobqueue.yaml`` (queue, cores, memory, walltime, job directives), scaled to ``settings.jobs`` jobs
    (adaptively up to it with ``settings.adaptive``). On CUDA each worker advertises one ``GPU`` resource,
    which the region tasks ask for. With ``start`` False nothing is submitted (``cluster.job_script()`` shows
    what would be)."""
    try:
        import dask_jobqueue
    except ImportError:
        raise SettingsError(f"--cluster {settings.cluster} needs dask-jobqueue: pip install 'ssai3d-dask[cluster]' "
                            f"(and a jobqueue.yaml describing your queue)") from None
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
           "lsf": dask_jobqueue.LSFCluster}[settings.cluster]
    kwargs = {"worker_extra_args": ["--resources", "GPU=1"]} if device == "cuda" else {}
    try:
        cluster = cls(**kwargs)
    except ValueError as exc:  # cores or memory missing from jobqueue.yaml
        raise SettingsError(f"--cluster {settings.cluster}: {exc}. Describe the jobs in ~/.config/dask/jobqueue.yaml "
                            f"(jobqueue: {settings.cluster}: cores, memory, queue, walltime)") from exc
    if start and settings.adaptive:
        cluster.adapt(minimum_jobs=1, maximum_jobs=settings.jobs or 1)
    elif start:
        cluster.scale(jobs=settings.jobs or 1)
    return cluster


def _local_client(settings, method: str | None, processes: bool):
    import dask
    from distributed import Client, LocalCluster

    n_gpu = gpu_count()
    cores = os.cpu_count() or 1
    workers = settings.workers or default_workers(method)
    threads_per_worker = settings.threads_per_worker
    kwargs = {"resources": {"GPU": 1}} if n_gpu else {}
    # Worker environment: intra-op threads so that all workers together use the cores once, and no
    # MALLOC_TRIM_THRESHOLD_ (distributed's default sets it; any explicit malloc tuning turns off glibc's
    # dynamic mmap threshold, so every large torch buffer is mmapped and page-faulted afresh: the demo
    # restore took 146 s with it and 29 s without on 2 cores).
    omp = max(1, cores // (workers * (threads_per_worker or 1)))
    dask.config.set({"distributed.nanny.pre-spawn-environ": {
        k: omp for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}})
    if n_gpu and threads_per_worker is None:  # region tasks per GPU: one computes while the other reads/writes
        from ssai3d_dask.restoration.task import TASKS_PER_GPU

        threads_per_worker = TASKS_PER_GPU
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker or 1, processes=processes,
                           memory_limit=settings.memory_limit or "auto", dashboard_address=":0", **kwargs)
    client = Client(cluster)
    logger.info("LocalCluster: %d workers x %d threads%s; dashboard %s", workers, threads_per_worker or 1,
                f", {n_gpu} GPUs" if n_gpu else "", client.dashboard_link)
    return client


def close_client(client) -> None:
    """Close a client from :func:`make_client`, and the LocalCluster it started, if any.

    ``Client.close`` leaves a cluster it was handed running (its nannies and worker processes); a CLI process
    exits anyway, but in-process callers (notebooks, tests) would collect idle clusters. A client connected to
    a ``--scheduler`` has no ``cluster`` and only disconnects: the user's cluster keeps running.
    """
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()
