"""Dask clients, GPU resources and the per-worker model cache."""

from __future__ import annotations

import logging
import os
import threading

from ssai3d_dask.errors import SettingsError

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
    """Connect to ``scheduler`` or start an embedded LocalCluster sized to this machine.

    Without GPUs: ``workers`` defaults to min(4, cores // 2) (at least 1), each
    with ``threads_per_worker`` (default 1; torch uses the remaining cores).
    With GPUs: one worker per GPU, each advertising a ``GPU`` resource.
    """
    import dask
    from distributed import Client, LocalCluster

    # distributed configures its loggers when first imported (after the CLI set levels): keep it quiet
    # unless we are debugging.
    if not logger.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)

    if workers is not None and workers < 1:
        raise SettingsError(f"--workers must be at least 1, got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise SettingsError(f"--threads-per-worker must be at least 1, got {threads_per_worker}")
    if memory_limit is not None and memory_limit != "auto":
        from dask.utils import parse_bytes

        try:
            if parse_bytes(memory_limit) <= 0:
                raise ValueError("not positive")
        except (ValueError, TypeError):
            raise SettingsError(f"--memory-limit {memory_limit!r} is not a size; give e.g. 4GiB, 500MB or auto") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise SettingsError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}); check the "
                                f"address and that the scheduler runs, or drop --scheduler for a local cluster") from exc
        logger.info("connected to %s (dashboard %s)", scheduler, client.dashboard_link)
        return client
    n_gpu = gpu_count()
    cores = os.cpu_count() or 1
    workers = workers or default_workers()
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
                           memory_limit=memory_limit or "auto", dashboard_address=":0", **kwargs)
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
