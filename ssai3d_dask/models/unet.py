"""U-Nets: the CARE network (2D, trained from scratch by ``train-care``) and the 3D generators of the
OT-CycleGAN baseline (``train-cyclegan``), one implementation for both."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssai3d_dask.ops.padding import pad_to_multiple

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {2: F.max_pool2d, 3: F.max_pool3d}


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, dims: int) -> None:
        conv = _CONV[dims]
        super().__init__(conv(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         conv(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """CSBDeep-style U-Net in ``dims`` = 2 or 3 dimensions: two 3-wide convs per level, max-pool down,
    nearest up + skip, residual output.

    Input and output (n, 1, *spatial); the spatial axes are reflect-padded to a multiple of ``2**depth``
    and cropped back. The output layer starts at zero, so an untrained network is the identity and
    training moves away from "do nothing", not from noise.
    """

    dims = 2

    def __init__(self, base: int, depth: int) -> None:
        super().__init__()
        self.config = {"base": int(base), "depth": int(depth)}
        chans = [base * 2**i for i in range(depth + 1)]
        d = self.dims
        self.down = nn.ModuleList([_Block(1 if i == 0 else chans[i - 1], chans[i], d) for i in range(depth)])
        self.bottom = _Block(chans[depth - 1], chans[depth], d)
        self.up = nn.ModuleList([_Block(chans[i + 1] + chans[i], chans[i], d) for i in reversed(range(depth))])
        self.out = _CONV[d](chans[0], 1, 1)
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
        size = x.shape[-self.dims:]
        inp = pad_to_multiple(x, self.multiple, self.dims)
        pool = _POOL[self.dims]
        skips, y = [], inp
        for blk in self.down:
            y = blk(y)
            skips.append(y)
            y = pool(y, 2)
        y = self.bottom(y)
        for blk, skip in zip(self.up, reversed(skips)):
            y = blk(torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"), skip], 1))
        y = self.out(y) + inp
        return y[(..., *(slice(0, n) for n in size))]


class CareUNet(UNet):
    """The CARE U-Net (2D slices). ``base=16, depth=4``: 1.96M parameters."""

    dims = 2

    def __init__(self, base: int = 16, depth: int = 4) -> None:
        super().__init__(base, depth)


class UNet3D(UNet):
    """A 3D U-Net: the OT-CycleGAN generators (G: anisotropic -> isotropic, F: back).
    ``base=16, depth=2``: 0.35M parameters; ``base=32, depth=3``: 5.6M."""

    dims = 3

    def __init__(self, base: int = 16, depth: int = 2) -> None:
        super().__init__(base, depth)


class PatchDiscriminator(nn.Module):
    """A 2D PatchGAN discriminator (the OT-CycleGAN's D_X and D_Y, on slices or MIPs).

    ``layers`` stride-2 4x4 convolutions (LeakyReLU 0.2, no normalisation: batches are small) then a
    3x3 convolution to one score per patch; a least-squares GAN reads the scores directly (no sigmoid).
    """

    def __init__(self, base: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.config = {"base": int(base), "layers": int(layers)}
        mods: list[nn.Module] = []
        cin = 1
        for i in range(layers):
            cout = base * 2 ** min(i, 3)
            mods += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        mods.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
