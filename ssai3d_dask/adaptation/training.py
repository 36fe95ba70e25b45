"""The one training loop, optimiser + schedule and validation split, shared by fine-tuning, CARE,
pretraining and the surgeon."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.models.precision import autocast, prepare
from ssai3d_dask.progress import ProgressLike, as_progress

logger = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float,
                   iterations: int | None, final_lr: float | None = None,
                   betas: tuple[float, float] = (0.9, 0.999)):
    """``(optimizer, scheduler)``: Adam or AdamW with cosine decay to ``final_lr`` (default ``lr / 100``)
    over ``iterations`` steps; ``iterations=None`` keeps the rate constant (scheduler None)."""
    if name not in OPTIMIZERS:
        raise SettingsError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    opt = OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, betas=betas)
    if iterations is None:
        return opt, None
    final = lr * 0.01 if final_lr is None else final_lr
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, iterations), eta_min=final)


def split_validation(items: Sequence | np.ndarray, rng: np.random.Generator, fraction: float = 0.1,
                     minimum: int = 2):
    """(validation, training): a random ``fraction`` (at least ``minimum``) held out."""
    order = rng.permutation(len(items))
    n_val = max(minimum, int(len(items) * fraction))
    return items[order[:n_val]], items[order[n_val:]]


def fit(model: torch.nn.Module, batch: Callable[[int], Sequence[torch.Tensor]],
        loss: Callable[..., torch.Tensor], opt: torch.optim.Optimizer, sched, iterations: int, *,
        start: int = 0, log: list | None = None, log_every: int = 10, clip_norm: float | None = None,
        after_step: Callable[[int], None] | None = None, desc: str = "train",
        postfix: Callable[[float], dict] | None = None, progress: ProgressLike = None, precision: str = "fp32") -> float:
    """Steps ``start..iterations-1``: ``loss(*batch(it))`` -> backward -> (clip) -> step -> schedule.

    ``precision`` (resolved, :mod:`ssai3d_dask.models.precision`): ``bf16`` runs the forward pass and loss
    under bf16 autocast; parameters, gradients, optimiser state and the loss value stay fp32. The model is
    put in channels-last layout.

    ``log`` receives ``(iteration, loss)`` every ``log_every`` steps and at the last; ``after_step(n)`` runs
    after step ``n`` (1-based count) for evaluation and checkpoints, and stops training by returning True.
    Returns the seconds taken.
    """
    device = next(model.parameters()).device
    prepare(model, device)
    t0 = time.perf_counter()
    bar = as_progress(progress).bar(desc, iterations, initial=start, unit="step")
    try:
        for it in range(start, iterations):
            model.train()
            inputs = batch(it)
            with autocast(precision, device):
                value = loss(*inputs)
            opt.zero_grad(set_to_none=True)
            value.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            opt.step()
            if sched is not None:
                sched.step()
            if log is not None and (it % log_every == 0 or it == iterations - 1):
                log.append((it, value.item()))
                if postfix is not None:
                    bar.postfix(**postfix(value.item()))
            bar.update(1)
            if after_step is not None and after_step(it + 1):
                break
    finally:
        bar.close()
    return round(time.perf_counter() - t0, 2)
