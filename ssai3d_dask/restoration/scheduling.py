"""Running region tasks: bounded submission on a Dask cluster, a plain loop without one, one progress bar.

On a cluster the client keeps at most ``in_flight`` tasks submitted (twice the cluster's threads, or its
GPUs, by default) and submits the next region as each finishes (``as_completed`` with ``add``), so client
and scheduler memory stay flat from a hundred regions to a million. Each task is built from the region
index alone (:meth:`ssai3d_dask.restoration.plan.Plan.region`); its pickled size does not depend on the region count.
A source handle that carries data (an in-memory volume) is scattered to the workers once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain, islice

from ssai3d_dask.progress import ProgressLike, as_progress
from ssai3d_dask.errors import Interrupted
from ssai3d_dask.restoration import task
from ssai3d_dask.restoration.task import run_region

logger = logging.getLogger(__name__)

_STOP = threading.Event()  # set by SIGTERM: submit nothing more


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While running regions, SIGTERM (SLURM, PBS, LSF, Kubernetes: then SIGKILL after a grace period) stops
    submitting: the region running here finishes (or is lost to the SIGKILL, unrecorded), tasks queued on a
    cluster are cancelled, and :func:`run_regions` raises :class:`Interrupted`. A second SIGTERM stops at
    once. Only the main thread can catch signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _STOP.is_set():
            raise Interrupted("stopped by a second SIGTERM")
        _STOP.set()
        logger.warning("SIGTERM: submitting no more regions; finishing the one in progress")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.clear()


def default_in_flight(client, device: str) -> int:
    """Twice the cluster's worker threads (CPU) or twice its GPU slots (CUDA)."""
    info = client.scheduler_info(n_workers=-1) if "n_workers" in _params(client.scheduler_info) else client.scheduler_info()
    workers = info.get("workers", {}).values()
    if device == "cuda":
        gpus = sum(int(w.get("resources", {}).get("GPU", 0)) for w in workers)
        if gpus:
            return 2 * task.TASKS_PER_GPU * gpus
    return max(2, 2 * sum(int(w.get("nthreads", 1)) for w in workers))


def _params(fn) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def task_payload(job, out: str, index: int) -> tuple:
    """The arguments of one region task: (plan, region, source, out, spec). Small and independent of the
    number of regions (a test pickles it at 1e3 and 1e6 regions); :func:`.task.run_region` takes it."""
    return job.plan, job.plan.region(index), job.source, out, job.spec


def _distributed(out: str, todo: Iterator[tuple], client, in_flight: int | None) -> Iterator[dict]:
    from distributed import as_completed

    todo = iter(todo)
    head = next(todo, None)
    if head is None:
        return
    todo = chain([head], todo)
    device = head[0].spec.device
    in_flight = in_flight or default_in_flight(client, device)
    resources = {"GPU": 1 / task.TASKS_PER_GPU} if device == "cuda" else None
    token = uuid.uuid4().hex[:8]
    scattered: dict[int, object] = {}

    def submit(item: tuple):
        job, i = item
        if id(job) not in scattered:  # a path handle travels in each task; an in-memory array once
            scattered[id(job)] = job.source if job.source.is_small else client.scatter(job.source, broadcast=True,
                                                                                      hash=False)
        plan, region, _, _, spec = task_payload(job, out, i)
        return client.submit(run_region, plan, region, scattered[id(job)], out, spec,
                             key=f"restore-{spec.prefix}{region.block_id}-{token}", pure=False,
                             resources=resources)

    logger.debug("submitting with at most %d tasks in flight", in_flight)
    futures = {submit(i) for i in islice(todo, in_flight)}
    pending = as_completed(futures)
    for fut in pending:
        res = fut.result()
        fut.release()
        futures.discard(fut)
        if _STOP.is_set():  # drop what is queued; a task already running on a worker still records itself
            client.cancel(list(futures))
            yield res
            return
        nxt = next(todo, None)
        if nxt is not None:
            fut = submit(nxt)
            futures.add(fut)
            pending.add(fut)
        yield res


def _local(out: str, todo: Iterator[tuple]) -> Iterator[dict]:
    """Regions one after another with every core, overlapped in three stages: while region N computes here,
    a reader thread reads region N+1's crop and a writer thread writes region N-1 and records it done. At
    most one crop waits and one write runs, so memory stays that of about three regions; results come back
    in order, each after its write, and an error in any stage stops the run at that region."""
    threads = os.cpu_count() or 1  # one region at a time with every core
    todo = iter(todo)
    with ThreadPoolExecutor(1, thread_name_prefix="ssai3d-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="ssai3d-write") as writer:

        def start(item):
            if item is None or _STOP.is_set():
                return None
            job, i = item
            region, spec = job.plan.region(i), job.spec.replace(torch_threads=threads)
            return job, region, spec, time.perf_counter(), reader.submit(task.read_region, job.plan, region,
                                                                         job.source, spec)

        current, writing = start(next(todo, None)), None
        while current is not None:
            job, region, spec, t0, reading = current
            crop = reading.result()
            current = start(next(todo, None))  # prefetch the next crop while this one computes
            data, skipped = task.compute_read_region(job.plan, region, crop, spec)
            if writing is not None:
                yield writing.result()  # one write in flight at most
            writing = writer.submit(task.write_region, out, region, spec, data, skipped, t0, int(crop.nbytes))
        if writing is not None:
            yield writing.result()


def run_regions(todo: Iterator[tuple], n_todo: int, out: str, client=None, in_flight: int | None = None,
                progress: ProgressLike = None) -> dict:
    """Run every (job, region index) of ``todo`` and return totals: regions, voxels, background regions, seconds,
    and the network precisions the workers used (each resolves ``auto`` on its own hardware). Each finished
    region is reported to ``progress`` (:mod:`ssai3d_dask.progress`; None: silent)."""
    results = _distributed(out, todo, client, in_flight) if client is not None else _local(out, todo)
    t0 = time.perf_counter()
    bar = as_progress(progress).bar("restore", n_todo, unit="region")
    regions = voxels = skipped = nbytes = 0
    precisions: set[str] = set()
    with stop_on_sigterm():
        for res in results:
            if res.get("precision") and not res["skipped"]:
                precisions.add(res["precision"])
            regions += 1
            voxels += res["voxels"]
            skipped += res["skipped"]
            nbytes += res["bytes_read"]
            bar.update(1)
            bar.postfix(Mvox_s=f"{voxels / 1e6 / max(time.perf_counter() - t0, 1e-9):.2f}")
        stopped = _STOP.is_set()
    bar.close()
    if stopped:
        raise Interrupted(f"stopped by SIGTERM after {regions} of {n_todo} regions")
    seconds = time.perf_counter() - t0
    logger.info("restored %d regions (%d background only) in %.1f s: %.2f Mvoxel/s, read %.1f MiB", regions, skipped,
                seconds, voxels / 1e6 / max(seconds, 1e-9), nbytes / 2**20)
    return {"regions": regions, "voxels": voxels, "skipped": skipped, "seconds": seconds, "bytes_read": nbytes,
            "precisions": sorted(precisions)}
