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


def zero_shot_metrics(model: NAFNet, blurred: torch.Tensor, sharp: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """The 14 raw metrics per layer, (n_layers, 14), from one forward/backward pass on a batch."""
    names = layer_names(model)
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out)) for n in names]
    model.eval()
    try:
        loss = loss_fn(gray_forward(model, blurred), sharp)
    finally:
        for h in hooks:
            h.remove()
    weights = [modules[n].weight for n in names]
    act_list = [acts[n] for n in names]
    grads = torch.autograd.grad(loss, weights + act_list, create_graph=True)
    gw, ga = grads[: len(names)], grads[len(names):]
    hg = torch.autograd.grad(sum((g * g.detach()).sum() for g in gw), weights, allow_unused=True)
    syn = _synflow(model, blurred.shape[-2:], names)
    rows = []
    for i, n in enumerate(names):
        a, g, w = act_list[i].detach(), ga[i].detach(), weights[i].detach()
        fisher = 0.5 * ((a * g).sum(dim=(-2, -1)) ** 2).mean(0).sum() if a.ndim == 4 else (a * g).pow(2).sum()
        grasp = -(hg[i] * w).sum() if hg[i] is not None else torch.tensor(0.0)
        rows.append([a.mean(), a.std(), a.abs().mean(), a.abs().std(), g.mean(), g.std(), g.abs().mean(),
                     g.abs().std(), fisher, (gw[i].detach() * w).abs().sum(), grasp, syn[i], w.mean(), w.std()])
    model.zero_grad(set_to_none=True)
    return np.array([[float(v) for v in r] for r in rows], dtype=np.float64)


def _synflow(model: NAFNet, hw, names: list[str]) -> list[float]:
    """SynFlow per layer on a float64 copy with |W| and a ones input (data-free)."""
    import copy

    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    r = gray_forward(m, torch.ones(1, 1, *hw, dtype=torch.float64)).sum()
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
