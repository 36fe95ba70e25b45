"""One task of a restoration: read the region's input crop, restore it, write it, record it done.

Runs on a worker. What the method computes with (its model folder, its PSF) is loaded once per worker
process (:meth:`~ssai3d_dask.restoration.methods.RestorationMethod.load`) and reused by every region it runs.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch

from ssai3d_dask.io.omezarr import write_region_levels
from ssai3d_dask.io.source import Source, read_checked
from ssai3d_dask.models.precision import resolve_precision
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.restoration.kernels import denoise_planes, extended_crop, to_output
from ssai3d_dask.restoration.methods import Resources, get_method
from ssai3d_dask.restoration.plan import Plan, Region
from ssai3d_dask.restoration.spec import TaskSpec

#: Region tasks a GPU worker runs at once: their device sections take turns (:data:`_DEVICE_LOCK`), so one
#: task's read and write overlap the other's compute.
TASKS_PER_GPU = 2
_DEVICE_LOCK = threading.Lock()


def compute_region(plan: Plan, region: Region, crop: np.ndarray, spec: TaskSpec,
                   resources: Resources | None = None) -> tuple[np.ndarray, bool]:
    """Restore one region from its input crop (no I/O). Returns the output-dtype core and whether the
    region was skipped as background (``skip_background``: its denoised input stays at or under
    ``empty_level``, and the interpolation is the answer).

    ``resources`` are what the method computes with (default: this worker's cached ones, from the spec).
    """
    method = get_method(spec.method)
    resources = resources if resources is not None else method.load(spec)
    if not method.normalised:  # in raw units, cast by the method itself (no normalisation, nor its rounding)
        ext, offset = extended_crop(plan, region, crop)
        return method.compute(ext, offset, region.shape, spec, resources), False
    denoiser = resources.denoiser or Denoiser()
    planes = denoise_planes(spec.norm.apply(np.asarray(crop, np.float32)), denoiser)
    ext, offset = extended_crop(plan, region, planes)
    skipped = bool(spec.skip_background and float(ext.max()) <= spec.empty_level)
    if skipped:
        restored = ext[tuple(slice(o, o + c) for o, c in zip(offset, region.shape))]
    else:
        restored = method.compute(ext, offset, region.shape, spec, resources)
    return to_output(restored, spec.norm, spec.out_dtype, in_place=True), skipped


def read_region(plan: Plan, region: Region, source: Source, spec: TaskSpec) -> np.ndarray:
    """The region's input crop (with its halo), every chunk checked (:func:`~ssai3d_dask.io.source.read_checked`)."""
    return read_checked(source, plan.input_crop(region), f"region {spec.prefix}{region.block_id}")


def compute_read_region(plan: Plan, region: Region, crop: np.ndarray, spec: TaskSpec) -> tuple[np.ndarray, bool]:
    """:func:`compute_region` with this worker's cached resources, at the task's thread count."""
    if spec.torch_threads and torch.get_num_threads() != spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    resources = get_method(spec.method).load(spec)
    if spec.device == "cuda":  # one task on the device at a time; the other reads or writes meanwhile
        with _DEVICE_LOCK:
            return compute_region(plan, region, crop, spec, resources)
    return compute_region(plan, region, crop, spec, resources)


def write_region(out: str, region: Region, spec: TaskSpec, data: np.ndarray, skipped: bool, t0: float,
                 bytes_read: int) -> dict:
    """Write the region's core at every task level, then its completion record; the task's result."""
    block_id = spec.prefix + region.block_id
    record = {"core": [[s.start, s.stop] for s in region.core], "skipped": skipped,
              "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    write_region_levels(out, list(spec.levels), region.core, data, block_id, record, tuple(spec.lead))
    network = get_method(spec.method).uses_model and spec.model_dir is not None
    used = resolve_precision(spec.precision, spec.device) if network else None
    return {"id": block_id, "voxels": int(np.prod(region.shape)), "skipped": skipped, "bytes_read": bytes_read,
            "precision": used}


def run_region(plan: Plan, region: Region, source: Source, out: str, spec: TaskSpec) -> dict:
    """One task: read the region's input crop, restore it, write it (all task levels), record it done.

    Runs on a worker; the method's resources are loaded once per worker process and reused. (Without a cluster,
    :func:`ssai3d_dask.restoration.scheduling.run_regions` runs the same three steps overlapped instead.)
    """
    t0 = time.perf_counter()
    crop = read_region(plan, region, source, spec)
    data, skipped = compute_read_region(plan, region, crop, spec)
    return write_region(out, region, spec, data, skipped, t0, int(crop.nbytes))
