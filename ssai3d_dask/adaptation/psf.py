"""PSF kernels, the PSF bank and the axial forward model.

The axial forward model of one stack: a lateral image is blurred along one
in-plane axis (the stand-in for z) and, when the z step ``dz`` is larger than
the lateral pixel ``dx``, sampled every ``dz/dx`` pixels along that axis and
interpolated back onto the ``dx`` grid with :func:`resample_linear` -- the very
function restoration uses to put z onto the lateral grid. The network thus
learns to undo exactly the degradation that inference feeds it.

Axis conventions: 2D kernels are (rows, cols) = (axis 0, axis 1); "angle 0"
elongates a kernel along axis 0, positive angles rotate it towards axis 1.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ssai3d_dask.ops.kernels import gaussian_kernel2d, pad_kernel
from ssai3d_dask.ops.resample import resample_linear
from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PSFBank:
    """The paper's bank: Gaussian widths x orientations along one axis.

    Parameters
    ----------
    sigmas_px : tuple of float
        Axial Gaussian sd (px of the lateral grid); paper: 3..7.
    angles_deg : tuple of float
        Orientations relative to the axis; paper: -45..45.
    sigma_lateral_px : float
        Minor-axis sd (the in-focus lateral PSF).
    """

    sigmas_px: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 7.0)
    angles_deg: tuple[float, ...] = (-45.0, -22.5, 0.0, 22.5, 45.0)
    sigma_lateral_px: float = 0.5
    _kernels: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.sigmas_px or not self.angles_deg:
            raise SettingsError("the PSF bank needs at least one sigma and one angle")
        if min(self.sigmas_px) <= 0:
            raise SettingsError("PSF sigmas must be positive (px)")

    def __len__(self) -> int:
        return len(self.sigmas_px) * len(self.angles_deg)

    def kernels(self) -> np.ndarray:
        """All kernels, (n_psf, K, K), elongated along axis 0, padded to one size."""
        ks = [gaussian_kernel2d(s, self.sigma_lateral_px, a) for s in self.sigmas_px for a in self.angles_deg]
        size = max(k.shape[0] for k in ks)
        return np.stack([pad_kernel(k, size) for k in ks])

    def to_dict(self) -> dict:
        return {"sigmas_px": list(self.sigmas_px), "angles_deg": list(self.angles_deg),
                "sigma_lateral_px": self.sigma_lateral_px}


def conv2d_per_sample(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each image with its own kernel, reflect-padded, same size.

    Parameters
    ----------
    x : (B, C, H, W) tensor
    kernels : (B, K, K) tensor, K odd

    Returns
    -------
    (B, C, H, W) tensor
    """
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    r = k // 2
    mode = "reflect" if r < h and r < w else "replicate"
    xp = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode=mode)
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)[:, None].flip(-1, -2)
    return F.conv2d(xp, weight, groups=b * c).reshape(b, c, h, w)


def axial_forward(x: torch.Tensor, factor: float, dim: int = -2, phase: float = 0.0) -> torch.Tensor:
    """Subsample along ``dim`` every ``factor`` px and interpolate back (the axial sampling model).

    ``phase`` in [0, factor) shifts the sampling grid (random in training so
    the network does not learn one grid position).
    """
    if factor <= 1.0:
        return x
    dim = dim % x.ndim
    n = x.shape[dim]
    n_coarse = int(math.floor((n - 1 - phase) / factor)) + 1
    coarse_pos = phase + factor * torch.arange(n_coarse, dtype=torch.float64)
    coarse = resample_linear(x, dim, coarse_pos)
    # Back onto the fine grid with the inference interpolation: fine pixel i sits at coarse coordinate (i - phase)/factor.
    fine_pos = (torch.arange(n, dtype=torch.float64) - phase) / factor
    return resample_linear(coarse, dim, fine_pos)
