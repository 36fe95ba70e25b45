"""The CARE U-Net (CSBDeep's 2D network for isotropic restoration), trained from scratch by ``train-care``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssai3d_dask.ops.padding import pad_to_multiple


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class CareUNet(nn.Module):
    """CSBDeep-style U-Net: two 3x3 convs per level, max-pool down, nearest up + skip, residual output.

    Input and output (n, 1, H, W); H, W are reflect-padded to a multiple of
    ``2**depth`` and cropped back. ``base=16, depth=4``: 1.96M parameters.
    """

    def __init__(self, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.config = {"base": int(base), "depth": int(depth)}
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_Block(1 if i == 0 else chans[i - 1], chans[i]) for i in range(depth)])
        self.bottom = _Block(chans[depth - 1], chans[depth])
        self.up = nn.ModuleList([_Block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(chans[0], 1, 1)
        # Start as the identity (residual output 0): training moves away from "do nothing", not from noise.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def multiple(self) -> int:
        return 2 ** self.config["depth"]

    @property
    def reach_px(self) -> int:
        """Receptive-field radius in px: ``6 * 2**depth - 2`` (22, 46, 94 px for depth 2, 3, 4; equal to the
        support of the input gradient of one output pixel, checked in tests)."""
        return int(6 * 2 ** self.config["depth"] - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        inp = pad_to_multiple(x, m)
        skips, y = [], inp
        for blk in self.down:
            y = blk(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottom(y)
        for blk, skip in zip(self.up, reversed(skips)):
            y = blk(torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"), skip], 1))
        y = self.out(y) + inp
        return y[..., :h, :w]
