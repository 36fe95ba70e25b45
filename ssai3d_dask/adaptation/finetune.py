"""Sparse fine-tuning: train only the chosen layers on synthesized pairs, freeze the rest."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ssai3d_dask.models.nafnet import NAFNet, gray_forward
from ssai3d_dask.adaptation.pairs import PairSynthesizer, batches
from ssai3d_dask.adaptation.losses import psnr_loss
from ssai3d_dask.models.precision import resolve_precision
from ssai3d_dask.settings import FinetuneSettings, resolve_device
from ssai3d_dask.adaptation.training import fit, make_optimizer

logger = logging.getLogger(__name__)


def freeze_except(model: NAFNet, layers: list[str] | None) -> int:
    """Make only the parameters of ``layers`` trainable (None: all). Returns the trainable count."""
    chosen = None if layers is None else set(layers)
    n = 0
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        train = chosen is None or name in chosen
        for p in own:
            p.requires_grad_(train)
            n += p.numel() if train else 0
    return n


def validation_loss(model: NAFNet, blurred: torch.Tensor, sharp: torch.Tensor) -> float:
    """The PSNR loss on the held-out pairs, in fp32 whatever the training precision (comparable across them)."""
    model.eval()
    with torch.no_grad():
        return float(psnr_loss(gray_forward(model, blurred), sharp))


def finetune(model: NAFNet, layers: list[str] | None, patches: np.ndarray, synth: PairSynthesizer,
             settings: FinetuneSettings, val: tuple[torch.Tensor, torch.Tensor] | None = None,
             progress: bool = True, seed: int = 0) -> dict:
    """Fine-tune ``model`` in place; returns a history with losses and timings.

    Parameters
    ----------
    layers : list of str or None
        Qualified names of the modules to train; None trains everything.
    patches : (n, P, P) float32
        Sharp normalised lateral patches.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device(resolve_device(settings.device))
    model.to(device)
    n_train = freeze_except(model, layers)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, settings.optimizer, settings.lr, settings.weight_decay, settings.iterations)
    precision = resolve_precision(settings.precision, device)
    history: dict = {"trainable_parameters": n_train, "precision": precision, "loss": []}
    stop = _Budget(model, params, val, settings)
    if val is not None:
        history["val_psnr_before"] = stop.best

    def step_loss(blurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        return psnr_loss(gray_forward(model, blurred), sharp)

    history["seconds"] = fit(model, lambda _: synth(batches(patches, settings.batch_size, rng), rng), step_loss,
                             opt, sched, settings.iterations, log=history["loss"], desc="fine-tune",
                             postfix=lambda v: {"psnr": f"{-v:.2f}"}, progress=progress, precision=precision,
                             after_step=stop)
    history.update(stop.finish())
    if val is not None:
        history["val_psnr_after"] = -validation_loss(model, *val)
        logger.info("fine-tuned %d parameters for %d steps in %.1f s (%s): validation PSNR %.2f -> %.2f dB",
                    n_train, history["steps"], history["seconds"], history["stopped_by"], history["val_psnr_before"],
                    history["val_psnr_after"])
    freeze_except(model, None)
    model.eval()
    return history


class _Budget:
    """``after_step`` of fine-tuning: the validation curve every ``eval_every`` steps, and the stop rule.

    Stops (returns True) when the validation PSNR has not improved by 0.01 dB for ``patience`` steps, or
    after ``max_minutes``; ``iterations`` bounds it in any case. With a patience set, the weights of the best
    validation point are restored at the end (the curve's maximum is the model that is kept).
    """

    MIN_DELTA_DB = 0.01

    def __init__(self, model: NAFNet, params: list[torch.nn.Parameter], val, settings: FinetuneSettings) -> None:
        self.model, self.params, self.val, self.s = model, params, val, settings
        self.t0 = time.perf_counter()
        self.curve: list[tuple[int, float]] = []
        self.best = -validation_loss(model, *val) if val is not None else float("-inf")
        self.best_step, self.best_state = 0, None
        self.steps, self.stopped_by = 0, "iterations"

    def __call__(self, step: int) -> bool:
        self.steps = step
        if self.s.max_minutes is not None and time.perf_counter() - self.t0 >= 60 * self.s.max_minutes:
            self.stopped_by = "max_minutes"
            return True
        if self.val is None or (step % self.s.eval_every and step != self.s.iterations):
            return False
        psnr = -validation_loss(self.model, *self.val)
        self.curve.append((step, round(psnr, 4)))
        if psnr > self.best + self.MIN_DELTA_DB:
            self.best, self.best_step = psnr, step
            if self.s.patience:
                self.best_state = [p.detach().clone() for p in self.params]
        elif self.s.patience and step - self.best_step >= self.s.patience:
            self.stopped_by = "patience"
            return True
        return False

    def finish(self) -> dict:
        if self.best_state is not None and self.curve and self.curve[-1][0] != self.best_step:
            with torch.no_grad():
                for p, b in zip(self.params, self.best_state):
                    p.copy_(b)
        return {"steps": self.steps, "stopped_by": self.stopped_by, "val_curve": self.curve,
                "best_step": self.best_step if self.s.patience else None}
