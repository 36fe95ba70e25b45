"""What ``ssai3d run --dry-run`` says about the adaptation before it runs: the base model as a stand-in for
the adapted one (the same architecture, so the restoration's plan and cost are the same) and the measured
time of one fine-tuning step."""

from __future__ import annotations

import time

import torch

from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.io.statistics import volume_statistics
from ssai3d_dask.models.checkpoint import load_model
from ssai3d_dask.models.folder import AdaptedModel
from ssai3d_dask.models.manifest import ModelManifest
from ssai3d_dask.models.nafnet import gray_forward
from ssai3d_dask.models.precision import autocast, prepare, resolve_precision
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.settings import resolve_device

def adaptation_stand_in(ds, adapt_settings) -> tuple:
    """For ``run --dry-run``: the base model standing in for the adapted one (same architecture, so the same
    cost) and a note with the measured time of a fine-tuning step."""
    vol = ds.first
    adapt_settings = adapt_settings.fitted(vol)
    adapt_settings.check_volume(vol)
    model, _ = load_model(adapt_settings.base)
    model.set_pool_window(model.local_window())
    denoiser = Denoiser(0.05, 0.05, "on") if adapt_settings.denoise == "on" else Denoiser()
    stand_in = AdaptedModel(model, ModelManifest("adapted", isotropic_geometry(vol.shape, vol.voxel_size_um).z_factor,
                                                 volume_statistics(vol, adapt_settings.seed), denoiser))
    ft = adapt_settings.finetune
    device = resolve_device(ft.device)
    precision = resolve_precision(ft.precision, device)
    prepare(model, device)
    px = min(ft.crop_px or adapt_settings.patch_px, adapt_settings.patch_px)  # what a step trains on
    x = torch.rand(ft.batch_size, 1, px, px, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-9)
    steps = []
    for _ in range(3):  # the step as fine-tuning runs it: same device, precision and layout
        t0 = time.perf_counter()
        opt.zero_grad()
        with autocast(precision, device):
            loss = gray_forward(model.train(), x).float().abs().mean()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - t0)
    model.eval()
    step = min(steps[1:])
    bounded = "at most " if ft.patience or ft.max_minutes is not None else ""
    note = (f"adaptation   {bounded}{ft.iterations} fine-tuning steps x {step:.2f} s (measured, batch {ft.batch_size}, "
            f"{px} px) = ~{ft.iterations * step / 60:.0f} min, plus sampling, denoiser "
            f"calibration and zero-shot metrics; restore times above use the base model as a stand-in"
            + ("; with --denoise auto the denoiser (if chosen) adds its cost" if adapt_settings.denoise == "auto" else ""))
    return stand_in, note
