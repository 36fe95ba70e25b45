"""The surgeon: a small MLP that scores a network's layers from their zero-shot metrics (paper Methods)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: The 14 zero-shot metrics of one layer, in the order the surgeon reads them.
METRIC_NAMES = ("act_mean", "act_std", "act_abs_mean", "act_abs_std", "grad_mean", "grad_std", "grad_abs_mean",
                "grad_abs_std", "fisher", "snip", "grasp", "synflow", "weight_mean", "weight_std")
N_EMBED = 16


def position_embedding(n_layers: int) -> np.ndarray:
    """Sinusoidal embedding of relative depth l / (L - 1), (n_layers, N_EMBED)."""
    pos = np.linspace(0, 1, n_layers)[:, None]
    freqs = np.pi * 2.0 ** np.arange(N_EMBED // 2)[None, :] / 2
    return np.concatenate([np.sin(pos * freqs), np.cos(pos * freqs)], axis=1)


class Surgeon(nn.Module):
    """6-layer MLP: (14 normalised metrics + depth embedding) -> layer score."""

    def __init__(self, hidden: int = 216, n_in: int = len(METRIC_NAMES) + N_EMBED) -> None:
        super().__init__()
        dims = [n_in] + [hidden] * 5
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def features(normalized: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([normalized, position_embedding(len(normalized))], axis=1)).float()
