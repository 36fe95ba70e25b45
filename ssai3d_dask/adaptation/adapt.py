"""Self-supervised adaptation of the base model to one stack (``ssai3d adapt``).

volume -> global statistics -> lazy lateral patches -> denoise -> PSF-bank pairs
-> zero-shot metrics on ~1% of the pairs -> surgeon -> top ~10% layers -> sparse
fine-tuning -> a check on one real crop that nothing is invented along z -> MODEL_DIR (model.pt,
manifest.json, validation.png, axial_check.png).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask import __version__
from ssai3d_dask.progress import ProgressLike
from ssai3d_dask.models.checkpoint import load_model, load_network, shipped_path
from ssai3d_dask.io.files import removed_on_failure
from ssai3d_dask.models.folder import AdaptedModel, check_new_folder, slice_subfolder, write_folder
from ssai3d_dask.models.manifest import InputRef, ModelManifest
from ssai3d_dask.ops.denoise import calibrate, fit_noise_model
from ssai3d_dask.adaptation.finetune import RESUME_FILE, finetune
from ssai3d_dask.adaptation.axial_check import axial_check, write_panel
from ssai3d_dask.settings import AdaptSettings, resolve_device
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.models.nafnet import NAFNet
from ssai3d_dask.models.reach import measure_reach
from ssai3d_dask.adaptation.pairs import PairSynthesizer
from ssai3d_dask.adaptation.training import split_validation
from ssai3d_dask.adaptation.losses import psnr_loss
from ssai3d_dask.adaptation.psf import PSFBank
from ssai3d_dask.adaptation.sampling import sample_lateral_patches, volume_statistics
from ssai3d_dask.adaptation.surgeon import (METRIC_NAMES, SURGEON_FILE, layer_names, normalize_metrics, score_layers,
                      select_layers, zero_shot_metrics)
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.errors import VolumeError

logger = logging.getLogger(__name__)


def _data_hash(vol: Volume, patches: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"source": vol.source, "shape": vol.shape, "voxel": vol.voxel_size_um}).encode())
    h.update(np.ascontiguousarray(patches[: min(8, len(patches))]).tobytes())
    return h.hexdigest()[:16]


def _run_fingerprint(settings: AdaptSettings, base_manifest: dict, layers: list[str] | None,
                     train_patches: np.ndarray, val: tuple[torch.Tensor, torch.Tensor]) -> str:
    """What decides a fine-tuning run, hashed: a resume file continues only the run it was written by."""
    h = hashlib.sha256()
    decided = settings.to_dict()
    decided["finetune"] = {k: v for k, v in decided["finetune"].items() if k not in ("checkpoint_every",)}
    h.update(json.dumps([decided, base_manifest.get("sha256"), layers], sort_keys=True, default=str).encode())
    for a in (train_patches, val[0].cpu().numpy(), val[1].cpu().numpy()):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _shipped_surgeon(model: NAFNet, base_sha256: str | None = None):
    path = shipped_path(SURGEON_FILE)
    if not path.exists():
        return None, "no shipped surgeon"
    surgeon, manifest = load_network(path, expect="surgeon")
    if manifest.get("base_config") != model.config.to_dict():
        return None, "shipped surgeon was trained for another architecture"
    if base_sha256 and manifest.get("base_sha256") and manifest["base_sha256"] != base_sha256:
        # Same architecture, other weights (a retrained or user base): the metrics it reads still mean the
        # same, so it is used, but its ranking was learned for other weights; `ssai3d train-surgeon --base`.
        logger.warning("the shipped surgeon was trained for another base model (sha256 %s...); its layer "
                       "ranking may be weaker for this one (retrain: ssai3d train-surgeon OUT --base ...)",
                       manifest["base_sha256"][:12])
    return surgeon, str(path)


def adapt(vol: Volume, out_dir: str | Path | None, settings: AdaptSettings | None = None,
          progress: ProgressLike = None, overwrite: bool = False) -> AdaptedModel:
    """Adapt the base model to ``vol``; write MODEL_DIR when ``out_dir`` is given."""
    settings = (settings or AdaptSettings()).fitted(vol)
    settings.check_volume(vol)
    check_new_folder(out_dir, overwrite)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    norm = volume_statistics(vol, settings.seed)
    ps = sample_lateral_patches(vol, settings.n_patches, settings.patch_px, norm, settings.seed)
    timings["sampling_s"] = round(time.perf_counter() - t, 2)
    logger.info("sampled %d patches (%d candidates), read %.1f MiB of %.1f MiB", len(ps.patches), ps.candidates,
                ps.bytes_read / 2**20, vol.nbytes / 2**20)
    t = time.perf_counter()
    denoiser = calibrate(ps.patches, settings.denoise)
    patches = denoiser(ps.patches)
    noise = fit_noise_model(patches)
    if settings.input_noise == "off":
        noise = dataclasses.replace(noise, used=False)
    logger.info("noise sd at half range %.4f (%s to the training inputs)", noise.sd(0.5),
                "added" if noise.used else "not added")
    timings["denoise_s"] = round(time.perf_counter() - t, 2)
    rng = np.random.default_rng(settings.seed + 1)
    val_patches, train_patches = split_validation(patches, rng)

    torch.manual_seed(settings.seed)  # a preset given as --base starts from a seeded initialisation
    model, base_manifest = load_model(settings.base)
    model.set_pool_window(model.local_window())
    device = resolve_device(settings.finetune.device)
    z_factor = isotropic_geometry(vol.shape, vol.voxel_size_um).z_factor
    psf_estimate, estimate_error = None, None
    paper = PSFBank()  # its defaults are the paper's 5 widths x 5 orientations
    widths = tuple(settings.sigmas_px or paper.sigmas_px)
    angles = tuple(settings.angles_deg or paper.angles_deg)
    t = time.perf_counter()
    if settings.psf_bank in ("auto", "wide"):
        from ssai3d_dask.adaptation.psf_estimate import auto_bank_widths, estimate_axial_blur

        try:
            psf_estimate = estimate_axial_blur(vol, norm, settings.seed)
        except VolumeError as e:  # too thin or too empty to measure: the fixed bank is still a sound default
            estimate_error = str(e)
            if settings.psf_bank == "wide" or not settings.sigmas_px:
                logger.warning("%s; using the fixed PSF bank %s px x %s deg (--psf-bank paper)", e, widths, angles)
        if settings.psf_bank == "auto" and (settings.sigmas_px or psf_estimate is not None):
            # the stack's own blur (or the one given), leaned, along z unless the user gave orientations
            blurs = settings.sigmas_px or (psf_estimate.sigma_px,)
            widths = tuple(round(settings.psf_lean * s, 3) for s in blurs)
            angles = settings.angles_deg or (0.0,)
        elif psf_estimate is not None:  # wide
            widths = auto_bank_widths(widths, psf_estimate.sigma_px)
        logger.info("axial blur estimate %s; PSF bank widths %s px, angles %s deg",
                    psf_estimate if psf_estimate is not None else "not available", widths, angles)
    timings["psf_estimate_s"] = round(time.perf_counter() - t, 2)
    bank = PSFBank(widths, angles)
    synth = PairSynthesizer(bank, z_factor, device, noise)
    val = synth(torch.from_numpy(val_patches[:, None]), np.random.default_rng(settings.seed + 2))

    t = time.perf_counter()
    names = layer_names(model)
    n_pairs = len(train_patches) * len(bank)
    n_metric = int(min(len(train_patches), max(4, round(settings.metrics_fraction * n_pairs))))
    mb, ms = synth(torch.from_numpy(train_patches[:n_metric, None]), np.random.default_rng(settings.seed + 3))
    raw_metrics = zero_shot_metrics(model.to(device), mb, ms, psnr_loss)
    norm_metrics = normalize_metrics(raw_metrics)
    if settings.selection == "surgeon":
        surgeon, surgeon_src = _shipped_surgeon(model, base_manifest.get("sha256"))
        scores, method = score_layers(norm_metrics, surgeon)
        if surgeon is None:
            logger.warning("%s: ranking layers by normalised snip (documented fallback)", surgeon_src)
        layers = select_layers(names, scores, settings.layers_fraction)
    elif settings.selection == "snip":
        (scores, method), surgeon_src = score_layers(norm_metrics, None), "-"
        layers = select_layers(names, scores, settings.layers_fraction)
    elif settings.selection == "random":
        scores, method, surgeon_src = np.random.default_rng(settings.seed).random(len(names)), "random", "-"
        layers = select_layers(names, scores, settings.layers_fraction)
    else:
        scores, method, surgeon_src, layers = np.ones(len(names)), "all", "-", None
    timings["metrics_s"] = round(time.perf_counter() - t, 2)
    logger.info("layers chosen by %s: %s", method, layers if layers is not None else "all")

    resume = Path(out_dir) / RESUME_FILE if out_dir is not None else None
    history = finetune(model, layers, train_patches, synth, settings.finetune, val=val, progress=progress,
                       seed=settings.seed, checkpoint=resume,
                       fingerprint=_run_fingerprint(settings, base_manifest, layers, train_patches, val))
    timings["finetune_s"] = history["seconds"]
    model.cpu()
    t = time.perf_counter()
    model.reach = measure_reach(model)  # the halo these weights need for block invariance (default_halo)
    timings["reach_s"] = round(time.perf_counter() - t, 2)
    logger.info("measured reach %d px (tile error %.1e at window %s px)", model.reach["reach_px"],
                model.reach["tile_error"], model.reach["pool_window_px"])
    if model.reach["tile_error"] > model.reach["tolerance"]:
        logger.warning("the adapted model reaches beyond %d px (tile error %.1e there): blocks may differ from "
                       "whole-volume inference by that much; pass a larger --halo to `ssai3d run` to reduce it",
                       model.reach["reach_px"], model.reach["tile_error"])
    t = time.perf_counter()
    brightest = int(np.argmax(ps.patches.mean(axis=(1, 2))))  # the check looks where the stack has signal
    half = settings.patch_px // 2
    centre = tuple(int(v) for v in np.asarray(ps.origins[brightest]) + np.array([0, half, half]))
    check, check_images = axial_check(vol, model, denoiser, norm, z_factor, centre)
    timings["axial_check_s"] = round(time.perf_counter() - t, 2)
    manifest = ModelManifest(
        kind="adapted", z_factor=z_factor, normalization=norm, denoiser=denoiser, input=InputRef.of(vol),
        settings=settings.to_dict(), history=history, package_version=__version__,
        pool_window_px=model.pool_window, reach=model.reach,
        extra={
            "base_model": {k: base_manifest.get(k) for k in ("preset", "sha256", "command")} | {"source": settings.base},
            "input_noise": noise.to_dict(),
            "psf_bank": bank.to_dict() | {"source": settings.psf_bank}
            | ({"lean": settings.psf_lean} if settings.psf_bank == "auto" else {}),
            "psf_estimate": (psf_estimate.to_dict() if psf_estimate is not None
                             else {"error": estimate_error} if estimate_error else None),
            "axial_check": check,
            "selection": {"method": method, "surgeon": surgeon_src, "fraction": settings.layers_fraction,
                          "layers": layers if layers is not None else names},
            "layer_metrics": {n: {"score": float(s), "raw": dict(zip(METRIC_NAMES, map(float, r))),
                                  "normalized": dict(zip(METRIC_NAMES, map(float, q)))}
                              for n, s, r, q in zip(names, scores, raw_metrics, norm_metrics)},
            "metric_pairs": n_metric,
            "sampling": {"patches": len(patches), "candidates": ps.candidates, "bytes_read": ps.bytes_read,
                         "volume_bytes": vol.nbytes},
            "precision": {"finetune": history["precision"], "metrics": "fp32"},
            "timings": timings,
            "data_hash": _data_hash(vol, ps.patches),
        })
    adapted = AdaptedModel(model, manifest)
    if out_dir is not None:
        write_model_dir(adapted, out_dir, val, check_images)
        resume.unlink(missing_ok=True)  # the result is written: nothing left to resume
    return adapted


def write_model_dir(adapted: AdaptedModel, out_dir: str | Path, val: tuple[torch.Tensor, torch.Tensor],
                    check_images: dict | None = None) -> Path:
    """model.pt (our checkpoint format, manifest inside), validation.png, axial_check.png, manifest.json."""
    extra = {"validation.png": lambda p: _validation_png(adapted.model, val, p, adapted.manifest.history or {})}
    if check_images:
        extra["axial_check.png"] = lambda p: write_panel(check_images, adapted.manifest.extra["axial_check"], p)
    return write_folder(out_dir, adapted.model, adapted.manifest, extra)


def _validation_png(model: NAFNet, val: tuple[torch.Tensor, torch.Tensor], path: Path, history: dict | None = None,
                    n: int = 4) -> None:
    """Held-out pairs (blurred, restored, sharp) and, below them, the validation PSNR curve of fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssai3d_dask.models.nafnet import gray_forward

    blurred, sharp = val[0][:n].cpu(), val[1][:n].cpu()
    with torch.no_grad():
        restored = gray_forward(model.eval(), blurred)
    curve = (history or {}).get("val_curve") or []
    rows = len(blurred) + (1 if curve else 0)
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    for i in range(len(blurred)):
        for j, (img, title) in enumerate(((blurred, "blurred"), (restored, "restored"), (sharp, "sharp"))):
            axes[i, j].imshow(img[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(title)
    if curve:
        for ax in axes[-1, 1:]:
            ax.remove()
        ax = axes[-1, 0]
        pos = ax.get_position()
        ax.set_position([pos.x0, pos.y0, 0.8, pos.height])
        steps, psnrs = zip(*([(0, history["val_psnr_before"])] if "val_psnr_before" in history else []) + list(curve))
        ax.plot(steps, psnrs, "o-", ms=3)
        if history.get("best_step"):
            ax.axvline(history["best_step"], color="gray", ls="--", lw=0.8, label="kept")
        if history.get("cooldown_from") is not None:
            ax.axvspan(history["cooldown_from"], history.get("steps", steps[-1]), color="tab:orange", alpha=0.15,
                       label="lr decay")
        if history.get("best_step") or history.get("cooldown_from") is not None:
            ax.legend(fontsize=6, loc="lower right")
        ax.set_xlabel("step")
        ax.set_ylabel("val PSNR (dB)")
        ax.set_title(f"stopped by {history.get('stopped_by', 'iterations')} at step {history.get('steps', steps[-1])}",
                     fontsize=8)
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)


def adapt_dataset(ds, out_dir: str | Path, settings: AdaptSettings | None = None, per_time: bool = False,
                  overwrite: bool = False, progress: ProgressLike = None) -> dict:
    """Adapt once per channel (its own statistics, denoiser and layers) into ``MODEL_DIR/c{c}``; every
    time point of a channel reuses its model unless ``per_time`` (then ``MODEL_DIR/t{t}/c{c}``).

    Returns ``{subfolder: AdaptedModel}``; with one channel and one model the subfolder is ``""``
    (MODEL_DIR itself, as for a single stack).
    """
    settings = (settings or AdaptSettings()).fitted(ds.first)  # every slice has the same (z, y, x) shape
    for _, _, _, vol in ds.slices():
        settings.check_volume(vol)  # every slice, before any work
    out = Path(out_dir)
    check_new_folder(out, overwrite or (out.is_dir() and any(out.rglob(RESUME_FILE))))  # a killed run continues
    done: dict = {}
    with removed_on_failure(out, keep=lambda p: any(p.rglob(RESUME_FILE))):  # a killed fine-tuning resumes
        for _, t, c, vol in ds.slices():
            sub = slice_subfolder(ds.channels, t, c, per_time)
            if sub in done:
                continue
            logger.info("adapting %s (channel %s, time %s) into %s", ds.source, c, t, out / sub if sub else out)
            done[sub] = adapt(vol, out / sub if sub else out, settings, progress=progress, overwrite=True)
    return done
