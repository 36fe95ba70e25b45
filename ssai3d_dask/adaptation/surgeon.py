"""Zero-shot layer metrics, the surgeon MLP that scores layers, and layer selection (paper Methods).

For every convolution of the base network, one forward and backward pass on
a few training pairs gives the paper's 14 metrics:

 1-4   activation mean, std, mean|.|, std|.|
 5-8   gradient (dL/dactivation) mean, std, mean|.|, std|.|
 9     fisher: 0.5 * sum_c (sum_hw A * G)^2 (channel saliency, Theis et al.)
 10    snip: sum |dL/dW * W|
 11    grasp: -sum (H g) * W, H g by double back-propagation
 12    synflow: sum dR/dW * W with R = sum of the output of the |W| network on a ones input
 13-14 weight mean, std

Metrics are normalised across the layers of one network (signed log, then
z-score), so the surgeon sees relative, scale-free values. The surgeon is a
6-layer MLP (~200k parameters) on the 14 metrics plus a sinusoidal embedding
of the layer's relative depth, trained with a pairwise ranking loss.

Fallback when no trained surgeon matches the base model: rank layers by
normalised snip (the first-order estimate of how much the loss changes
through that layer's weights), documented in the log and the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ssai3d_dask.models.nafnet import NAFNet, gray_forward
from ssai3d_dask.models.surgeon import METRIC_NAMES, Surgeon, features
from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)

SURGEON_FILE = "surgeon-small.pt"


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the layers the surgeon chooses from (every Conv2d / Linear, in model order)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


class _Moments:
    """Running sum, sum of squares and count of a tensor's elements (float64), for mean and unbiased std."""

    def __init__(self) -> None:
        self.s = self.s2 = 0.0
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.s += float(x.sum())
        self.s2 += float((x * x).sum())
        self.n += x.numel()

    def mean(self) -> float:
        return self.s / self.n

    def std(self) -> float:
        return float(np.sqrt(max(self.s2 - self.s * self.s / self.n, 0.0) / max(self.n - 1, 1)))


def zero_shot_metrics(model: NAFNet, blurred: torch.Tensor, sharp: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk: int = 8) -> np.ndarray:
    """The 14 raw metrics per layer, (n_layers, 14), for the loss of the whole batch.

    ``loss_fn`` must be a mean over samples (as :func:`~ssai3d_dask.adaptation.losses.psnr_loss` is): the
    batch is then processed ``chunk`` samples at a time and the metrics are combined exactly (sums for the
    gradients, running moments for the statistics, a second pass for GRASP's Hessian-gradient product, which
    needs the whole batch's gradient first). Memory is that of ``chunk`` samples with double
    back-propagation, whatever the batch size: all 58 pairs of a default adaptation at once held 9 GB.
    """
    names = layer_names(model)
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    n_total = blurred.shape[0]
    parts = [(blurred[i:i + chunk], sharp[i:i + chunk]) for i in range(0, n_total, max(1, chunk))]
    model.eval()

    def chunk_loss(b: torch.Tensor, s: torch.Tensor, acts: dict | None) -> torch.Tensor:
        hooks = [] if acts is None else [
            modules[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out)) for n in names]
        try:
            return loss_fn(gray_forward(model, b), s) * (b.shape[0] / n_total)
        finally:
            for h in hooks:
                h.remove()

    # Pass 1: weight gradients of the whole batch's loss, activation and activation-gradient statistics, fisher.
    gw = [torch.zeros_like(w) for w in weights]
    a_m, a_abs, g_m, g_abs = ([_Moments() for _ in names] for _ in range(4))
    fisher = np.zeros(len(names))
    for b, s in parts:
        acts: dict[str, torch.Tensor] = {}
        loss = chunk_loss(b, s, acts)
        act_list = [acts[n] for n in names]
        grads = torch.autograd.grad(loss, weights + act_list)
        for i in range(len(names)):
            a, g = act_list[i].detach(), grads[len(names) + i]
            gw[i] += grads[i]
            a_m[i].add(a), a_abs[i].add(a.abs()), g_m[i].add(g), g_abs[i].add(g.abs())
            # per-sample channel saliency squared; the full batch averages it over the samples
            fisher[i] += (float(0.5 * ((a * g).sum(dim=(-2, -1)).double() ** 2).sum() / n_total) if a.ndim == 4
                          else float((a * g).double().pow(2).sum()))
        del acts, act_list, grads, loss
    # Pass 2: H g with g the whole batch's gradient: sum over chunks of d/dW (g_chunk . g).
    hg = [torch.zeros_like(w) for w in weights]
    for b, s in parts:
        g_c = torch.autograd.grad(chunk_loss(b, s, None), weights, create_graph=True)
        h = torch.autograd.grad(sum((gc * g).sum() for gc, g in zip(g_c, gw)), weights, allow_unused=True)
        for i, x in enumerate(h):
            if x is not None:
                hg[i] += x
        del g_c, h
    syn = _synflow(model, blurred.shape[-2:], names)
    rows = []
    for i in range(len(names)):
        w = weights[i].detach()
        rows.append([a_m[i].mean(), a_m[i].std(), a_abs[i].mean(), a_abs[i].std(), g_m[i].mean(), g_m[i].std(),
                     g_abs[i].mean(), g_abs[i].std(), fisher[i], float((gw[i] * w).abs().sum()),
                     float(-(hg[i] * w).sum()), syn[i], float(w.mean()), float(w.std())])
    model.zero_grad(set_to_none=True)
    return np.array(rows, dtype=np.float64)


def _synflow(model: NAFNet, hw, names: list[str]) -> list[float]:
    """SynFlow per layer on a float64 copy with |W| and a ones input (data-free)."""
    import copy

    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    r = gray_forward(m, torch.ones(1, 1, *hw, dtype=torch.float64, device=next(m.parameters()).device)).sum()
    mods = dict(m.named_modules())
    ws = [mods[n].weight for n in names]
    gs = torch.autograd.grad(r, ws, allow_unused=True)
    return [float((g * w).sum().detach()) if g is not None else 0.0 for g, w in zip(gs, ws)]


def normalize_metrics(raw: np.ndarray) -> np.ndarray:
    """Per metric across layers: signed log of the magnitude relative to its median, then z-score."""
    x = np.asarray(raw, np.float64)
    scale = np.median(np.abs(x), axis=0, keepdims=True) + 1e-30
    t = np.sign(x) * np.log1p(np.abs(x) / scale)
    sd = t.std(axis=0, keepdims=True)
    return np.where(sd > 0, (t - t.mean(axis=0, keepdims=True)) / np.where(sd > 0, sd, 1), 0.0)


def score_layers(normalized: np.ndarray, surgeon: Surgeon | None) -> tuple[np.ndarray, str]:
    """Scores per layer and the method used ("surgeon" or the documented "snip" fallback)."""
    if surgeon is None:
        return normalized[:, METRIC_NAMES.index("snip")].copy(), "snip-fallback"
    with torch.no_grad():
        return surgeon(features(normalized)).numpy().astype(np.float64), "surgeon"


def select_layers(names: list[str], scores: np.ndarray, fraction: float) -> list[str]:
    """The top ``fraction`` of layers by score (at least one), in model order."""
    if not 0 < fraction <= 1:
        raise SettingsError(f"layers fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * len(names))))
    top = set(np.argsort(-scores, kind="stable")[:k].tolist())
    return [n for i, n in enumerate(names) if i in top]
