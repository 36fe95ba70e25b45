"""Offline pretraining of the base deblurring model (``ssai3d pretrain``).

Stands in for NAFNet's REDS pretraining, which cannot be downloaded here:
blind deblurring of natural and procedural images under microscope-like
degradations (see :mod:`ssai3d_dask.adaptation.pretrain_data`). PSNR loss and AdamW with a
cosine schedule, as NAFNet. Deterministic by seed; a resume checkpoint is
written every ``checkpoint_every`` iterations and picked up on restart.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask import __version__
from ssai3d_dask.progress import ProgressLike
from ssai3d_dask.adaptation.losses import psnr_loss
from ssai3d_dask.adaptation.training import fit, make_optimizer
from ssai3d_dask.errors import SettingsError
from ssai3d_dask.settings import PretrainSettings, resolve_device
from ssai3d_dask.io.files import write_json, write_with
from ssai3d_dask.models.precision import resolve_precision
from ssai3d_dask.models.checkpoint import load_model, load_network, load_state_strict, read_state, save_network, sha256_file
from ssai3d_dask.models.nafnet import PRESETS, NAFNet, build, count_parameters, gray_forward
from ssai3d_dask.models.reach import measure_reach
from ssai3d_dask.adaptation.pretrain_data import degrade, image_pool, random_crops

logger = logging.getLogger(__name__)


HELDOUT_SEED = 0


def heldout_set(seed: int = HELDOUT_SEED, n: int = 64, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed held-out (degraded, sharp) pairs from the held-out images (the narrow axial range of the
    first bases, so that the in-training curves of every run compare)."""
    rng = np.random.default_rng(seed + 777)
    sharp = random_crops(image_pool("heldout", seed, n_procedural=8), n, size, rng)
    return degrade(sharp, rng).clamp(-0.5, 1.5), sharp


@torch.no_grad()
def evaluate_psnr(model: NAFNet, degraded: torch.Tensor, sharp: torch.Tensor, batch: int = 16) -> tuple[float, float]:
    """Mean PSNR (dB) of input and of model output against the sharp images."""
    model.eval()
    pin, pout = [], []
    for i in range(0, len(sharp), batch):
        x, y = degraded[i : i + batch], sharp[i : i + batch]
        out = gray_forward(model, x)
        pin.append(-psnr_loss(x.clamp(0, 1), y).item())
        pout.append(-psnr_loss(out.clamp(0, 1), y).item())
    return float(np.mean(pin)), float(np.mean(pout))


def pretrain(out: str | Path, settings: PretrainSettings, progress: ProgressLike = None) -> Path:
    """Train a base model and write it (fp16, with manifest) to ``out``, and the manifest with the
    weights' sha256 to ``out`` with suffix ``.json`` (the sidecar shipped beside the weights).

    A resume file ``<out>.resume.pt`` holds model, optimizer, RNG state and
    the iteration; rerunning with the same ``out`` continues from it.
    """
    out = Path(out)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    parent = None
    if settings.init:
        model, parent = load_model(settings.init)
        if model.config.to_dict() != PRESETS[settings.preset].to_dict():
            raise SettingsError(f"--init {settings.init} is not a '{settings.preset}' model; pass --preset to match it")
        model = model.float().to(device)
    else:
        model = build(settings.preset).to(device)
    patch = settings.patch_px or model.config.train_size
    opt, sched = make_optimizer(model.parameters(), "adamw", settings.lr, settings.weight_decay, settings.iterations,
                                final_lr=1e-6, betas=(0.9, 0.9))
    images = image_pool("train", settings.seed)
    # The held-out set is fixed (not tied to the training seed) so runs stay comparable.
    held_x, held_y = heldout_set()
    rng = np.random.default_rng(settings.seed)
    start, history = 0, []
    resume = out.with_name(out.name + ".resume.pt")
    if resume.exists():
        state = read_state(resume, ("model", "optimizer", "scheduler", "rng", "torch_rng", "iteration", "history"),
                           device)
        load_state_strict(model, state["model"], str(resume))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start, history = int(state["iteration"]), json.loads(state["history"])
        logger.info("resuming pretraining at iteration %d", start)
    t0 = time.perf_counter()
    precision = resolve_precision(settings.precision, device)

    def batch(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        sharp = random_crops(images, settings.batch_size, patch, rng)
        degraded = degrade(sharp, rng, settings.max_axial_sd)
        return degraded.to(device), sharp.to(device)

    def after_step(done: int) -> None:
        if done % settings.eval_every == 0 or done == settings.iterations:
            pin, pout = evaluate_psnr(model, held_x.to(device), held_y.to(device))
            history.append({"iteration": done, "heldout_psnr_in": pin, "heldout_psnr_out": pout})
            logger.info("iteration %d: held-out PSNR %.2f -> %.2f dB", done, pin, pout)
        if done % settings.checkpoint_every == 0 and done < settings.iterations:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "rng": json.dumps(rng.bit_generator.state),
                     "torch_rng": torch.get_rng_state(), "iteration": done, "history": json.dumps(history)}
            write_with(resume, lambda tmp: torch.save(state, tmp))

    fit(model, batch, lambda degraded, sharp: psnr_loss(gray_forward(model, degraded), sharp), opt, sched,
        settings.iterations, start=start, log=[], log_every=1, clip_norm=0.01 * math.sqrt(count_parameters(model)),
        after_step=after_step, desc="pretrain", postfix=lambda v: {"psnr": f"{-v:.2f}"}, progress=progress,
        precision=precision)
    manifest = {
        "kind": "base",
        "preset": settings.preset,
        "config": model.config.to_dict(),
        "parameters": count_parameters(model),
        "trained_on": "scikit-image sample images + procedural dead-leaves and fluorescence-like images",
        "heldout_images": "skimage camera, coins, cell + procedural (held-out seeds)",
        "settings": settings.to_dict(),
        "history": history,
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        "precision": precision,
        "machine": platform.processor() or platform.machine(),
        "package_version": __version__,
        "command": f"ssai3d pretrain {out} --preset {settings.preset} --iterations {settings.iterations} "
                   f"--batch-size {settings.batch_size} --patch-px {patch} --lr {settings.lr} --seed {settings.seed} "
                   f"--max-axial-sd {settings.max_axial_sd:g} --precision {precision}"
                   + (f" --init {settings.init}" if settings.init else ""),
    }
    if parent is not None:
        manifest["init_from"] = {k: parent.get(k) for k in ("sha256", "command", "history", "settings", "init_from")
                                 if parent.get(k) is not None}
    if settings.note:
        manifest["note"] = settings.note
    save_network(model.cpu(), out, manifest, half=True)
    record_reach(out)
    write_sidecar(out)
    resume.unlink(missing_ok=True)
    return out


def record_reach(weights: str | Path) -> dict:
    """Measure the reach of the base ``weights`` (as stored, at the pooling window adaptation uses) and
    write it into their manifest (``"reach"``), so that ``default_halo`` follows these weights. Returns it.

    Weights pretrained before the reach was recorded get it with this; rewrite the sidecar after.
    """
    weights = Path(weights)
    model, manifest = load_network(weights, expect="nafnet")
    model.set_pool_window(model.local_window())
    manifest["reach"] = measure_reach(model)
    manifest.pop("sha256", None)
    model.set_pool_window(None)
    save_network(model, weights, manifest, half=True)
    logger.info("reach of %s: %d px at window %s px (tile error %.1e)", weights, manifest["reach"]["reach_px"],
                manifest["reach"]["pool_window_px"], manifest["reach"]["tile_error"])
    return manifest["reach"]


def write_sidecar(weights: str | Path, note: str | None = None) -> Path:
    """Write ``weights`` with suffix ``.json``: the checkpoint's manifest plus its sha256 (and ``note``,
    replacing the manifest's, e.g. when shipping weights whose run was started without ``--note``).

    The sidecar is what people and a release review read without loading torch; it is written
    after the weights, so it never names weights that are not there.
    """
    weights = Path(weights)
    _, manifest = load_network(weights, expect="nafnet")
    manifest = manifest | ({"note": note} if note else {}) | {"sha256": sha256_file(weights)}
    return write_json(weights.with_suffix(".json"), manifest, indent=2)
