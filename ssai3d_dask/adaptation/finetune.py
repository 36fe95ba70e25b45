"""Fine-tuning: train the chosen layers (all by default) on synthesized pairs, freeze the rest."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask.progress import ProgressLike
from ssai3d_dask.io.files import write_with
from ssai3d_dask.models.checkpoint import load_state_strict, read_state
from ssai3d_dask.models.nafnet import NAFNet, gray_forward
from ssai3d_dask.adaptation.pairs import PairSynthesizer, batches
from ssai3d_dask.adaptation.losses import psnr_loss
from ssai3d_dask.models.precision import resolve_precision
from ssai3d_dask.settings import FinetuneSettings, resolve_device
from ssai3d_dask.adaptation.training import fit, make_optimizer

logger = logging.getLogger(__name__)

#: The fine-tuning resume file inside a model folder.
RESUME_FILE = "finetune.resume.pt"


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
             progress: ProgressLike = None, seed: int = 0, checkpoint: Path | None = None, fingerprint: str = "") -> dict:
    """Fine-tune ``model`` in place; returns a history with losses and timings.

    Parameters
    ----------
    layers : list of str or None
        Qualified names of the modules to train; None trains everything.
    patches : (n, P, P) float32
        Sharp normalised lateral patches.
    checkpoint : path, optional
        Resume file: written every ``settings.checkpoint_every`` steps (weights, optimiser, schedule, stop
        rule, random states, loss log). When it exists with the same ``fingerprint`` (a hash of everything
        that decides the run), training continues from it to the weights an uninterrupted run reaches.
        The caller removes it once the result is written.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device(resolve_device(settings.device))
    model.to(device)
    n_train = freeze_except(model, layers)
    params = [p for p in model.parameters() if p.requires_grad]
    stop = _Budget(model, params, val, settings)
    opt, sched = make_optimizer(params, settings.optimizer, settings.lr, settings.weight_decay,
                                None if stop.cools else settings.iterations)
    if stop.cools:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, stop.lr_factor)
    precision = resolve_precision(settings.precision, device)
    history: dict = {"trainable_parameters": n_train, "precision": precision, "loss": []}
    if val is not None:
        history["val_psnr_before"] = stop.best

    def step_loss(blurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        return psnr_loss(gray_forward(model, blurred), sharp)

    def state() -> dict:
        return {"fingerprint": fingerprint, "step": stop.steps, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else {},
                "budget": stop.state(), "rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(), "loss": json.dumps(history["loss"])}

    start, before = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        saved = read_state(checkpoint, ("fingerprint", "step", "model", "optimizer", "scheduler", "budget", "rng",
                                        "torch_rng", "loss"))
        if saved["fingerprint"] != fingerprint:
            logger.warning("%s was written for other data or settings; fine-tuning starts afresh", checkpoint)
        else:
            load_state_strict(model, saved["model"], str(checkpoint))
            opt.load_state_dict(saved["optimizer"])
            if sched is not None:
                sched.load_state_dict(saved["scheduler"])
            before = stop.load(saved["budget"])
            rng.bit_generator.state = json.loads(saved["rng"])
            torch.set_rng_state(saved["torch_rng"])
            history["loss"] = [tuple(x) for x in json.loads(saved["loss"])]
            start = int(saved["step"])
            logger.info("resuming fine-tuning at step %d from %s", start, checkpoint)

    def after_step(step: int) -> bool:
        done = stop(step)
        if checkpoint is not None and not done and step % settings.checkpoint_every == 0:
            write_with(checkpoint, lambda tmp: torch.save(state(), tmp))
        return done

    crop = training_crop(settings.crop_px, patches.shape[-1], synth.bank.sigmas_px, synth.z_factor)
    history["crop_px"] = crop or int(patches.shape[-1])

    def batch(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_crop(*synth(batches(patches, settings.batch_size, rng), rng), crop, rng)

    history["seconds"] = before + fit(model, batch,
                                      step_loss, opt, sched, settings.iterations, start=start, log=history["loss"],
                                      desc="fine-tune", postfix=lambda v: {"psnr": f"{-v:.2f}"}, progress=progress,
                                      precision=precision, after_step=after_step)
    history.update(stop.finish())
    if val is not None:
        history["val_psnr_after"] = -validation_loss(model, *val)
        logger.info("fine-tuned %d parameters for %d steps in %.1f s (%s): validation PSNR %.2f -> %.2f dB",
                    n_train, history["steps"], history["seconds"], history["stopped_by"], history["val_psnr_before"],
                    history["val_psnr_after"])
    freeze_except(model, None)
    model.eval()
    return history


#: A training crop must span this many of the widest training blur's sd (its support, +-3 sd) and this many z
#: steps, or fine-tuning trains on whole pairs: a pair whose blur reaches past the crop teaches deblurring
#: without the context that decides it. The real confocal beads (blur sd ~14 px, z step 5.6 px) keep whole
#: pairs. Measured there only together with the fast stop rule (benchmarks/results/adaptation_time.md): crops
#: 1.63, whole pairs 1.59, the former defaults 1.31 (axial/lateral FWHM); crops under the default rule were
#: not run on them.
CROP_SPAN_SD = 6.0
CROP_SPAN_STEPS = 8.0


def training_crop(crop_px: int, patch_px: int, sigmas_px, z_factor: float) -> int:
    """The crop fine-tuning trains on: ``crop_px``, or 0 (whole pairs) when it is 0, not smaller than the patch,
    or too small to hold the blur (:data:`CROP_SPAN_SD` x the widest sd) or :data:`CROP_SPAN_STEPS` z steps."""
    need = max(CROP_SPAN_SD * max(sigmas_px), CROP_SPAN_STEPS * z_factor)
    if not crop_px or crop_px >= patch_px or crop_px < need:
        return 0
    return int(crop_px)


def random_crop(blurred: torch.Tensor, sharp: torch.Tensor, crop_px: int,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``crop_px`` square of each (blurred, sharp) pair, at its own place per pair (whole
    pairs when ``crop_px`` is 0 or not smaller). Cut after synthesis, so the blur and the z sampling
    see the whole patch and the crops carry no border effect."""
    p = sharp.shape[-1]
    if not crop_px or crop_px >= min(sharp.shape[-2:]):
        return blurred, sharp
    ys = rng.integers(0, sharp.shape[-2] - crop_px + 1, len(sharp))
    xs = rng.integers(0, p - crop_px + 1, len(sharp))
    cut = [(slice(None), slice(y, y + crop_px), slice(x, x + crop_px)) for y, x in zip(ys, xs)]
    return (torch.stack([b[c] for b, c in zip(blurred, cut)]).contiguous(),
            torch.stack([s[c] for s, c in zip(sharp, cut)]).contiguous())


class _Budget:
    """``after_step`` of fine-tuning: the validation curve every ``eval_every`` steps, the learning-rate schedule
    and the stop rule.

    With a patience (and a validation set), the rate stays at its peak until the validation PSNR has not improved
    by ``min_gain_db`` for ``patience`` steps, then decays to 1/100 along a cosine over ``cooldown`` steps, and training
    stops at the end of the decay. A step budget (``iterations``) or a time budget (``max_minutes``, at the
    measured step time) that would end first starts the decay early enough to finish it inside the budget. The
    weights of the curve's best point are restored at the end. (A rate still near its peak when a plateau stops
    training leaves the weights where the optimiser's noise has them; the decay lets them settle.) Without a
    patience the rate follows one cosine over ``iterations`` (``lr_factor`` unused) and every step runs.
    """

    FINAL = 0.01

    def __init__(self, model: NAFNet, params: list[torch.nn.Parameter], val, settings: FinetuneSettings) -> None:
        self.model, self.params, self.val, self.s = model, params, val, settings
        self.cools = bool(settings.patience) and val is not None
        self.t0 = time.perf_counter()
        self.curve: list[tuple[int, float]] = []
        self.best = -validation_loss(model, *val) if val is not None else float("-inf")
        self.best_step = 0
        self.kept, self.kept_step = self.best, 0  # the starting weights, kept if nothing beats them
        self.best_state = [p.detach().clone() for p in params] if self.cools else None
        self.ema = [p.detach().clone() for p in params] if settings.ema else None
        self.steps, self.stopped_by = 0, "iterations"
        self.length = min(settings.cooldown, settings.iterations)
        # the decay starts here at the latest (the step budget), earlier on a stall or the time budget
        self.cool_from: int | None = settings.iterations - self.length if self.cools else None
        self.cool_reason = "iterations"

    def lr_factor(self, step: int) -> float:
        """The rate's multiple at ``step`` (LambdaLR): 1, then a cosine from 1 to FINAL over the cooldown."""
        if self.cool_from is None or step <= self.cool_from or not self.length:
            return 1.0
        t = min(1.0, (step - self.cool_from) / self.length)
        return self.FINAL + (1 - self.FINAL) * 0.5 * (1 + math.cos(math.pi * t))

    def _start_cooldown(self, step: int, reason: str) -> bool:
        """Begin the decay now (unless it already has); True when there is nothing left to decay."""
        if self.cool_from is None or step < self.cool_from:
            self.cool_from, self.cool_reason = step, reason
        return step >= self.cool_from + self.length

    def _average(self, step: int) -> None:
        """Move the weight average towards the weights (its decay warms up, (1 + t) / (10 + t), so that the
        first steps' large moves are not averaged with the starting weights for long)."""
        decay = min(float(self.s.ema), (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                e.lerp_(p, 1.0 - decay)

    def __call__(self, step: int) -> bool:
        self.steps = step
        if self.ema is not None:
            self._average(step)
        elapsed = time.perf_counter() - self.t0
        if self.s.max_minutes is not None:
            if elapsed >= 60 * self.s.max_minutes:
                self.stopped_by = "max_minutes"
                return True
            if self.cools and elapsed + self.length * elapsed / step >= 60 * self.s.max_minutes:
                self._start_cooldown(step, "max_minutes")
        if self.cools and step >= self.cool_from + self.length:
            self._evaluate(step)
            self.stopped_by = self.cool_reason
            return True
        if self.val is None or (step % self.s.eval_every and step != self.s.iterations):
            return False
        self._evaluate(step)
        if self.cools and step - self.best_step >= self.s.patience:  # (cools: a patience and a validation set)
            if step < self.cool_from:  # a stall before the decay: decay now
                if self._start_cooldown(step, "patience"):  # no cooldown: stop at the stall
                    self.stopped_by = "patience"
                    return True
            elif self.cool_reason != "patience" and step - max(self.best_step, self.cool_from) >= self.s.patience:
                # a stall inside a decay the budget started (one longer than the patience): stop
                self.stopped_by = "patience"
                return True
        return False

    def _evaluate(self, step: int) -> None:
        if self.curve and self.curve[-1][0] == step:
            return
        if self.ema is None:
            psnr = -validation_loss(self.model, *self.val)
        else:  # the average's weights are the ones evaluated (and kept)
            with torch.no_grad():
                live = [p.detach().clone() for p in self.params]
                for p, e in zip(self.params, self.ema):
                    p.copy_(e)
                psnr = -validation_loss(self.model, *self.val)
                for p, w in zip(self.params, live):
                    p.copy_(w)
        self.curve.append((step, round(psnr, 4)))
        if psnr > self.best + self.s.min_gain_db:  # the patience's clock
            self.best, self.best_step = psnr, step
        if self.cools and psnr > self.kept:  # the weights kept: the curve's maximum
            self.kept, self.kept_step = psnr, step
            self.best_state = [t.detach().clone() for t in (self.ema or self.params)]

    def state(self) -> dict:
        """What a resume needs (tensors and JSON-able values only: the file is loaded with weights_only)."""
        return {"curve": json.dumps(self.curve), "numbers": json.dumps(
                    [self.best, self.best_step, self.kept, self.kept_step, self.steps, self.stopped_by, self.cool_from,
                     self.cool_reason, time.perf_counter() - self.t0]),
                "best_state": self.best_state or [], "ema": self.ema or []}

    def load(self, state: dict) -> float:
        """Continue from :meth:`state`; returns the seconds already spent."""
        self.curve = [tuple(x) for x in json.loads(state["curve"])]
        (self.best, self.best_step, self.kept, self.kept_step, self.steps, self.stopped_by, self.cool_from,
         self.cool_reason, elapsed) = json.loads(state["numbers"])
        if self.best_state is not None:
            self.best_state = [t.to(p.device) for t, p in zip(state["best_state"], self.params)]
        if self.ema is not None:
            self.ema = [t.to(p.device) for t, p in zip(state["ema"], self.params)]
        self.t0 = time.perf_counter() - elapsed
        return float(elapsed)

    def finish(self) -> dict:
        kept = self.best_state if self.best_state is not None else self.ema  # no patience: the last average
        if kept is not None and (self.ema is not None or (self.curve and self.curve[-1][0] != self.kept_step)):
            with torch.no_grad():
                for p, b in zip(self.params, kept):
                    p.copy_(b)
        out = {"steps": self.steps, "stopped_by": self.stopped_by, "val_curve": self.curve,
               "best_step": self.kept_step if self.s.patience else None}
        if self.cools:
            out["cooldown_from"] = min(self.cool_from, self.steps)
        return out
