"""Training losses: one module for fine-tuning, pretraining, CARE and the surgeon."""

from __future__ import annotations

import torch
from torch import nn


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NAFNet's PSNR loss: -PSNR averaged over the batch (data range 1)."""
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)  # fp32 also under bf16 autocast
    return (10.0 * torch.log10(mse + 1e-8)).mean()


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (CSBDeep's default loss for CARE)."""
    return nn.functional.l1_loss(pred.float(), target.float())


def pairwise_ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RankNet loss over all pairs with different labels: softplus(-(s_i - s_j)) where label_i > label_j."""
    ds = scores[:, None] - scores[None, :]
    dl = labels[:, None] - labels[None, :]
    mask = dl > 0
    return nn.functional.softplus(-ds[mask]).mean() if mask.any() else scores.sum() * 0
