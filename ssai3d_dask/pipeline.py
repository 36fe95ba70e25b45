"""restore(): the Dask graph over the block plan, resumable writes, progress, metadata."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import numpy as np
import torch

from . import __version__
from .cluster import cached_adapted_model, gpu_count
from .denoise import Denoiser
from .errors import SettingsError
from .omezarr import MultiscaleWriter, default_window, write_level0_region
from .restore import (Plan, Region, default_halo, denoise_planes, extended_crop, make_plan, restore_block,
                      to_output)
from .rl import default_rl_halo, gaussian_psf_on_grid, load_psf, richardson_lucy
from .sampling import Normalization, volume_statistics
from .volume import Volume

logger = logging.getLogger(__name__)

#: ssai3d: the adapted NAFNet; care: a CARE U-Net from `train-care`; rl: Richardson-Lucy with a given PSF;
#: interp: linear z interpolation only.
METHODS = ("ssai3d", "care", "rl", "interp")


@dataclass
class RestoreSettings:
    """How to restore. Sizes in output voxels (z, y, x); each a multiple of 16."""

    method: str = "ssai3d"
    chunks: tuple[int, int, int] = (64, 128, 128)
    region: tuple[int, int, int] = (128, 256, 256)
    halo: int | None = None
    view: str = "mean"
    dtype: str | None = None
    batch: int | None = None  # slices per forward pass; None: 4 on CPU (page-fault bound above), 32 on CUDA
    device: str = "auto"
    skip_empty: bool = True
    empty_level: float = 0.01
    ngff_version: str = "0.5"
    psf_sigma_um: tuple[float, float, float] | None = None  # rl: Gaussian PSF sd (z, y, x)
    psf_file: str | None = None  # rl: a measured PSF at the output voxel size instead
    rl_iterations: int = 30

    def validate(self) -> None:
        """Check sizes before any expensive work (multiples of 16, regions of whole chunks)."""
        if self.method not in METHODS:
            raise SettingsError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "rl":
            if (self.psf_sigma_um is None) == (self.psf_file is None):
                raise SettingsError("method rl needs the PSF: give --psf-sigma-um DZ DY DX or --psf FILE (one of them)")
            if self.psf_sigma_um is not None and (len(self.psf_sigma_um) != 3 or min(self.psf_sigma_um) <= 0):
                raise SettingsError(f"--psf-sigma-um needs three positive numbers (z y x), got {self.psf_sigma_um}")
            if self.rl_iterations < 1:
                raise SettingsError(f"--rl-iterations must be >= 1, got {self.rl_iterations}")
        elif self.psf_sigma_um is not None or self.psf_file is not None:
            raise SettingsError("--psf-sigma-um/--psf are for --method rl (CARE takes its PSF at `ssai3d train-care`)")
        sizes = {"--chunks": self.chunks, "--region": self.region, "--halo": (self.halo or 16,)}
        for name, vals in sizes.items():
            if any(int(v) <= 0 or int(v) % 16 for v in vals):
                raise SettingsError(f"{name} {tuple(vals)} must be positive multiples of 16 (the network's down-sampling)")
        if any(r % c for r, c in zip(self.region, self.chunks)):
            raise SettingsError(f"--region {tuple(self.region)} must be a whole number of --chunks {tuple(self.chunks)}")

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if gpu_count() else "cpu"
        return self.device


def _check_model_dir(method: str, model_dir) -> None:
    """The model folder exists and holds the kind of network the method runs."""
    from .care import is_care

    maker = "ssai3d adapt" if method == "ssai3d" else "ssai3d train-care"
    if model_dir is None:
        raise SettingsError(f"method {method} needs --model MODEL_DIR (from `{maker}`)"
                            + (", or use `ssai3d run`" if method == "ssai3d" else ""))
    if not (Path(model_dir) / "model.pt").exists():
        raise SettingsError(f"{model_dir} is not a model folder (no model.pt); make one with `{maker}`")
    if is_care(model_dir) != (method == "care"):
        raise SettingsError(f"{model_dir} holds a {'CARE' if is_care(model_dir) else 'SSAI-3D'} model; "
                            f"use --method {'care' if is_care(model_dir) else 'ssai3d'} with it")


def process_region(plan: Plan, region: Region, crop: np.ndarray, out: str, spec: dict) -> dict:
    """Restore one region and write it. Runs on a worker; loads the model once per worker."""
    t0 = time.perf_counter()
    if spec["torch_threads"] and torch.get_num_threads() != spec["torch_threads"]:
        torch.set_num_threads(spec["torch_threads"])
    if spec["model_dir"] is not None:  # ssai3d or care
        adapted = cached_adapted_model(spec["model_dir"])
        model, denoiser = adapted.model, adapted.denoiser
        device = torch.device(spec["device"])
        if next(model.parameters()).device != device:
            model.to(device)
            if device.type == "cuda":
                model.to(memory_format=torch.channels_last)
    else:
        model, denoiser, device = None, Denoiser(), torch.device("cpu")
    norm = Normalization.from_dict(spec["norm"])
    planes = denoise_planes(norm.apply(np.asarray(crop, np.float32)), denoiser)
    ext, offset = extended_crop(plan, region, planes)
    core = tuple(slice(o, o + c) for o, c in zip(offset, region.shape))
    skipped = bool(spec["skip_empty"] and float(ext.max()) <= spec["empty_level"])
    if skipped:  # nothing but background within reach: the interpolation is the answer
        restored = ext[core]
    elif spec["method"] == "rl":
        restored = richardson_lucy(ext, spec["psf"], spec["rl_iterations"], spec["device"])[core]
    else:
        restored = restore_block(ext, offset, region.shape, model, spec["view"], spec["batch"], device)
    data = to_output(restored, norm, np.dtype(spec["dtype"]))
    record = {"core": [[s.start, s.stop] for s in region.core], "skipped": skipped,
              "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    write_level0_region(out, region.core, data, region.block_id, record)
    return {"id": region.block_id, "voxels": int(np.prod(region.shape)), "skipped": skipped}


def restore(vol: Volume, model_dir: str | Path | None, out: str | Path, settings: RestoreSettings | None = None,
            overwrite: bool = False, resume: bool = False, client=None, progress: bool = True) -> Path:
    """Restore ``vol`` into a multiscale OME-Zarr at ``out`` with isotropic voxels.

    Parameters
    ----------
    model_dir : path or None
        An adapted model folder (``ssai3d adapt``, method ``ssai3d``) or a CARE model folder
        (``ssai3d train-care``, method ``care``); None for ``rl`` and ``interp``.
    client : distributed.Client, optional
        Used when given (or when one is active); otherwise dask's local scheduler.
    resume : bool
        Keep regions recorded as done in ``out`` and compute only the rest.
    """
    settings = settings or RestoreSettings()
    settings.validate()
    uses_model = settings.method in ("ssai3d", "care")
    if uses_model:
        _check_model_dir(settings.method, model_dir)
    out = Path(out)
    dz, dy, dx = vol.voxel_size_um
    z_factor = max(1.0, vol.anisotropy)
    psf = None
    if uses_model:
        adapted = cached_adapted_model(model_dir)
        norm, model, denoiser = adapted.norm, adapted.model, adapted.denoiser
        if abs(adapted.z_factor - z_factor) > 0.02 * z_factor:
            logger.warning("model was adapted for dz/dx = %.3f, this volume has %.3f; results may suffer",
                           adapted.z_factor, z_factor)
    else:
        norm, model, denoiser = volume_statistics(vol), None, Denoiser()
    if settings.method == "rl":
        psf = (load_psf(settings.psf_file) if settings.psf_file
               else gaussian_psf_on_grid(settings.psf_sigma_um, dx, z_factor)[0])
        halo = settings.halo if settings.halo is not None else default_rl_halo(psf)
    else:
        halo = settings.halo if settings.halo is not None else default_halo(model, denoiser)
    try:
        plan = make_plan(vol.shape, z_factor, settings.chunks, settings.region, (halo, halo, halo))
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    dtype = np.dtype(settings.dtype or vol.dtype)
    writer = MultiscaleWriter(out, plan.out_shape, dtype, (dx, dy, dx), plan.chunks, overwrite=overwrite,
                              resume=resume, ngff_version=settings.ngff_version, name="restored")
    done = writer.done_blocks() if resume else set()
    todo = [r for r in plan.regions if r.block_id not in done]
    logger.info("output %s voxels %s um; %d regions of %s with halo %d (%d already done)", plan.out_shape,
                (dx, dy, dx), len(plan.regions), plan.region_shape, halo, len(done))
    if client is None:
        try:
            from distributed import get_client

            client = get_client()
        except ValueError:
            client = None
    spec = {"method": settings.method, "model_dir": str(Path(model_dir).resolve()) if uses_model else None,
            "psf": psf, "rl_iterations": settings.rl_iterations,
            "norm": norm.to_dict(), "view": settings.view,
            "batch": settings.batch or (32 if settings.resolved_device() == "cuda" else 4),
            "device": settings.resolved_device(), "dtype": dtype.str, "skip_empty": settings.skip_empty,
            "empty_level": settings.empty_level,
            # Workers of a cluster keep the OpenMP pool they were started with (cluster.make_client sizes it);
            # the local scheduler runs one region at a time with every core.
            "torch_threads": None if client is not None else (os.cpu_count() or 1)}
    annotations = {"resources": {"GPU": 1}} if spec["device"] == "cuda" and client is not None else {}
    with dask.annotate(**annotations):
        tasks = [dask.delayed(process_region, pure=False)(plan, r, vol.data[plan.input_crop(r)], str(out), spec,
                                                          dask_key_name=f"restore-{r.block_id}-{id(spec)}")
                 for r in todo]
    from tqdm.auto import tqdm

    if client is not None:
        from distributed import as_completed

        results = (fut.result() for fut in as_completed(client.compute(tasks, optimize_graph=False)))
    else:  # the local scheduler: one region at a time, bounded memory
        results = (task.compute(scheduler="threads") for task in tasks)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="restore", unit="region", disable=not progress)
    voxels = skipped = 0
    for res in results:
        voxels += res["voxels"]
        skipped += res["skipped"]
        bar.update(1)
        bar.set_postfix(Mvox_s=f"{voxels / 1e6 / max(time.perf_counter() - t0, 1e-9):.2f}")
    bar.close()
    seconds = time.perf_counter() - t0
    logger.info("restored %d regions (%d background) in %.1f s: %.2f Mvoxel/s", len(todo), skipped, seconds,
                voxels / 1e6 / max(seconds, 1e-9))
    writer.build_pyramid()
    window = default_window(writer._window_sample(), dtype)
    provenance = {"package_version": __version__, "input": {"source": vol.source, "shape": list(vol.shape),
                  "voxel_size_um": list(vol.voxel_size_um), "selection": vol.selection},
                  "method": settings.method, "model_dir": spec["model_dir"],
                  "model": (adapted.manifest.get("selection", {}) | {"base": adapted.manifest.get("base_model")})
                  if settings.method == "ssai3d" else
                  ({"kind": "care", "settings": adapted.manifest.get("settings")} if settings.method == "care"
                   else None),
                  "psf_shape": list(psf.shape) if psf is not None else None,
                  "settings": asdict(settings) | {"halo": halo}, "normalization": norm.to_dict()}
    writer.write_metadata(window, provenance)
    return out
