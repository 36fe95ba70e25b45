"""Padding: mirror padding of blocks (numpy 'symmetric') and padding images to a network's multiple."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def symmetric_pad(x, pad: Sequence[tuple[int, int]]):
    """Mirror-pad every axis including the edge sample (numpy ``mode="symmetric"``).

    ``pad`` holds one ``(before, after)`` pair per leading axis. Unlike ``np.pad``, a pad wider than the
    array is allowed: the mirror repeats (tiny blocks at a volume edge). Accepts a numpy array or a torch
    tensor and returns the same type.
    """
    if isinstance(x, np.ndarray):
        return symmetric_pad(torch.from_numpy(np.ascontiguousarray(x)), pad).numpy()
    for dim, (lo, hi) in enumerate(pad):
        while lo > 0 or hi > 0:
            n = x.shape[dim]
            a, b = min(lo, n), min(hi, n)
            x = torch.cat([x.narrow(dim, 0, a).flip(dim), x, x.narrow(dim, n - b, b).flip(dim)], dim)
            lo, hi = lo - a, hi - b
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int, dims: int = 2) -> torch.Tensor:
    """Pad the last ``dims`` axes (2 or 3) at the far end to a multiple, by reflection (replicate if too small)."""
    sizes = x.shape[-dims:]
    extra = [(-n) % multiple for n in sizes]
    if not any(extra):
        return x
    mode = "reflect" if all(p < n for p, n in zip(extra, sizes)) else "replicate"
    pad: list[int] = []
    for p in reversed(extra):  # F.pad lists the last axis first
        pad += [0, p]
    return F.pad(x, tuple(pad), mode=mode)
