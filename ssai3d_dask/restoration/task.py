"""One task of a restoration: read the region's input crop, restore it, write it, record it done.

Runs on a worker. The model (:func:`~ssai3d_dask.models.folder.cached_folder`) and the PSF are loaded once
per worker process and reused by every region it runs.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch

from ssai3d_dask.io.omezarr import write_region_levels
from ssai3d_dask.io.source import Source, read_checked
from ssai3d_dask.models.folder import cached_folder
from ssai3d_dask.models.precision import prepare, resolve_precision
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.restoration.kernels import (denoise_planes, extended_crop, interpolate_core, restore_block,
                                             to_output)
from ssai3d_dask.restoration.plan import Plan, Region
from ssai3d_dask.restoration.rl import richardson_lucy
from ssai3d_dask.settings import NETWORK_METHODS

_PSF: dict = {}
_PSF_LOCK = threading.Lock()
#: Region tasks a GPU worker runs at once: their device sections take turns (:data:`_DEVICE_LOCK`), so one
#: task's read and write overlap the other's compute.
TASKS_PER_GPU = 2
_DEVICE_LOCK = threading.Lock()


def _cached_psf(path: str) -> np.ndarray:
    key = (path, os.stat(path).st_mtime_ns)
    with _PSF_LOCK:
        if key not in _PSF:
            _PSF.clear()
            _PSF[key] = np.load(path, allow_pickle=False)
        return _PSF[key]


def compute_region(plan: Plan, region: Region, crop: np.ndarray, spec: dict, model=None,
                   denoiser: Denoiser | None = None, psf: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Restore one region from its input crop (no I/O). Returns the output-dtype core and whether the
    region was skipped as background (``skip_background``: its denoised input stays at or under
    ``empty_level``, and the interpolation is the answer)."""
    if spec["method"] == "interp":  # in raw units: interpolation needs no normalisation (nor its rounding)
        ext, offset = extended_crop(plan, region, crop)
        return interpolate_core(ext, offset, region.shape, np.dtype(spec["dtype"])), False
    denoiser = denoiser or Denoiser()
    norm = Normalization.from_dict(spec["norm"])
    planes = denoise_planes(norm.apply(np.asarray(crop, np.float32)), denoiser)
    ext, offset = extended_crop(plan, region, planes)
    core = tuple(slice(o, o + c) for o, c in zip(offset, region.shape))
    skipped = bool(spec.get("skip_background") and float(ext.max()) <= spec["empty_level"])
    if skipped:
        restored = ext[core]
    elif spec["method"] == "rl":
        restored = richardson_lucy(np.asarray(ext), psf, spec["rl_iterations"], spec["device"])[core]
    else:
        if model is not None:
            prepare(model, spec["device"])  # the cached model, moved to the device channels-last once
        restored = restore_block(ext, offset, region.shape, model, spec["view"], spec["batch"],
                                 torch.device(spec["device"]),
                                 resolve_precision(spec.get("precision", "fp32"), spec["device"]),
                                 spec.get("compile", "off") == "on")
    return to_output(restored, norm, np.dtype(spec["dtype"]), in_place=True), skipped


def _worker_model(spec: dict):
    if spec["model_dir"] is None:
        return None, None
    adapted = cached_folder(spec["model_dir"])
    return adapted.model, adapted.denoiser


def read_region(plan: Plan, region: Region, source: Source, spec: dict) -> np.ndarray:
    """The region's input crop (with its halo), every chunk checked (:func:`~ssai3d_dask.io.source.read_checked`)."""
    return read_checked(source, plan.input_crop(region), f"region {spec.get('prefix', '')}{region.block_id}")


def compute_read_region(plan: Plan, region: Region, crop: np.ndarray, spec: dict) -> tuple[np.ndarray, bool]:
    """:func:`compute_region` with this worker's cached model, denoiser and PSF, at the task's thread count."""
    if spec["torch_threads"] and torch.get_num_threads() != spec["torch_threads"]:
        torch.set_num_threads(spec["torch_threads"])
    model, denoiser = _worker_model(spec) if spec["method"] in NETWORK_METHODS else (None, None)
    psf = _cached_psf(spec["psf_path"]) if spec["method"] == "rl" else None
    if spec["device"] == "cuda":  # one task on the device at a time; the other reads or writes meanwhile
        with _DEVICE_LOCK:
            return compute_region(plan, region, crop, spec, model, denoiser, psf)
    return compute_region(plan, region, crop, spec, model, denoiser, psf)


def write_region(out: str, region: Region, spec: dict, data: np.ndarray, skipped: bool, t0: float,
                 bytes_read: int) -> dict:
    """Write the region's core at every task level, then its completion record; the task's result."""
    block_id = spec.get("prefix", "") + region.block_id
    record = {"core": [[s.start, s.stop] for s in region.core], "skipped": skipped,
              "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    write_region_levels(out, spec["levels"], region.core, data, block_id, record, tuple(spec.get("lead", ())))
    network = spec["method"] in NETWORK_METHODS and spec["model_dir"] is not None
    used = resolve_precision(spec.get("precision", "fp32"), spec["device"]) if network else None
    return {"id": block_id, "voxels": int(np.prod(region.shape)), "skipped": skipped, "bytes_read": bytes_read,
            "precision": used}


def run_region(plan: Plan, region: Region, source: Source, out: str, spec: dict) -> dict:
    """One task: read the region's input crop, restore it, write it (all task levels), record it done.

    Runs on a worker; the model and PSF are loaded once per worker process and reused. (Without a cluster,
    :func:`ssai3d_dask.restoration.scheduling.run_regions` runs the same three steps overlapped instead.)
    """
    t0 = time.perf_counter()
    crop = read_region(plan, region, source, spec)
    data, skipped = compute_read_region(plan, region, crop, spec)
    return write_region(out, region, spec, data, skipped, t0, int(crop.nbytes))
