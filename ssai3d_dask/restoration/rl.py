"""Richardson-Lucy deconvolution: the classical baseline (``--method rl``).

Pure kernels on one block. The pipeline feeds them the same extended,
z-resampled crop as the network (:func:`ssai3d_dask.restoration.kernels.extended_crop`),
so RL inherits block invariance from the halo: a voxel's RL estimate depends
only on voxels within a few PSF radii (the multiplicative updates spread
information by one PSF support per iteration, but the weight decays fast), so
with a halo of several PSF sds the interior of a block equals whole-volume RL
(measured in tests/test_baselines.py).

The PSF acts on the isotropic grid the deconvolution runs on. The z
interpolation that made that grid (linear, factor ``f = dz/dx``) blurs z a
little more: a triangle of variance ``f**2 / 6``, added to the axial variance
of a Gaussian PSF by :func:`gaussian_psf_on_grid`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.ops.padding import symmetric_pad

logger = logging.getLogger(__name__)

EPS = 1e-6


def gaussian_psf(sigmas_px: Sequence[float], truncate: float = 3.0) -> np.ndarray:
    """A normalised 3D Gaussian (z, y, x) with the given sd per axis in voxels, odd size, centred."""
    if len(sigmas_px) != 3 or min(sigmas_px) <= 0:
        raise SettingsError(f"PSF sd must be three positive numbers (z, y, x), got {tuple(sigmas_px)}")
    axes = []
    for s in sigmas_px:
        r = max(1, int(math.ceil(truncate * s)))
        t = np.arange(-r, r + 1, dtype=np.float64)
        axes.append(np.exp(-0.5 * (t / s) ** 2))
    psf = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (psf / psf.sum()).astype(np.float32)


def gaussian_psf_on_grid(sigma_um: Sequence[float], voxel_um: float, z_factor: float) -> tuple[np.ndarray, list]:
    """The PSF on the isotropic output grid (voxel ``voxel_um``): the optical sd per axis in voxels, with
    the variance of linear z interpolation (``z_factor**2 / 6``) added along z. Returns (psf, sds in voxels)."""
    sz, sy, sx = (float(s) / voxel_um for s in sigma_um)
    sz = math.sqrt(sz**2 + (z_factor**2 / 6.0 if z_factor > 1 else 0.0))
    return gaussian_psf((sz, sy, sx)), [sz, sy, sx]


def load_psf(path: str | Path) -> np.ndarray:
    """A measured PSF (3D, z y x, sampled at the output voxel size) from .npy or TIFF, normalised to sum 1."""
    path = Path(path)
    if not path.exists():
        raise SettingsError(f"PSF file {path} does not exist")
    try:
        if path.suffix == ".npy":
            psf = np.load(path, allow_pickle=False)
        else:
            import tifffile

            psf = tifffile.imread(path)
        psf = np.squeeze(np.asarray(psf, np.float64))
    except (ValueError, TypeError, OSError) as exc:  # object arrays, damaged files, non-numeric data
        raise SettingsError(f"cannot read PSF {path} as a numeric 3D array (.npy or .tif): "
                            f"{str(exc).splitlines()[0]}") from None
    if psf.ndim != 3:
        raise SettingsError(f"PSF {path} must be 3D (z, y, x), got shape {psf.shape}")
    psf = np.clip(psf - np.median(psf[[0, -1]]), 0, None)  # drop a constant background from the end planes
    if psf.sum() <= 0:
        raise SettingsError(f"PSF {path} has no signal above its background")
    return (psf / psf.sum()).astype(np.float32)


def psf_reach(psf: np.ndarray) -> int:
    """Half the PSF support along its longest axis, in voxels."""
    return int(max(psf.shape) // 2)


def _otf(psf: np.ndarray, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The PSF's transfer function on a grid of ``shape`` (PSF centred on voxel 0)."""
    if any(p > s for p, s in zip(psf.shape, shape)):
        raise SettingsError(f"PSF {psf.shape} is larger than the block {tuple(shape)}; raise --region or --halo")
    k = torch.zeros(tuple(shape), dtype=torch.float32, device=device)
    k[tuple(slice(0, p) for p in psf.shape)] = torch.from_numpy(psf).to(device)
    k = torch.roll(k, shifts=tuple(-(p // 2) for p in psf.shape), dims=(0, 1, 2))
    return torch.fft.rfftn(k)


def richardson_lucy(image: np.ndarray, psf: np.ndarray, iterations: int, device: torch.device | str = "cpu",
                    start: float | None = None) -> np.ndarray:
    """Richardson-Lucy deconvolution of one 3D block (z, y, x), FFT convolutions in torch.

    The block is reflect-padded by the PSF radius so that convolution sees
    mirrored data at its edges (the same convention as the pipeline's border
    padding), deconvolved, and cropped back. Negative input is clipped to 0
    (RL needs non-negative data). The estimate starts from the data, which
    keeps RL local (a constant start from a block's mean would not be);
    ``start`` gives a constant start instead (scikit-image uses 0.5).

    Parameters
    ----------
    image : (Z, Y, X) float array, normalised (background near 0)
    psf : (pz, py, px) float array summing to 1, odd sizes, centred
    iterations : int
    """
    if iterations < 1:
        raise SettingsError(f"RL iterations must be >= 1, got {iterations}")
    device = torch.device(device)
    pads = [p // 2 for p in psf.shape]
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(device).clamp_min(0)
    x = symmetric_pad(x, [(p, p) for p in pads])
    otf = _otf(psf, x.shape, device)
    otf_conj = otf.conj()  # correlation with the PSF = convolution with its mirror

    def conv(a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfftn(torch.fft.rfftn(a) * h, s=a.shape)

    est = x.clone() if start is None else torch.full_like(x, float(start))
    for _ in range(iterations):
        ratio = x / conv(est, otf).clamp_min(EPS)
        est = est * conv(ratio, otf_conj)
    sl = tuple(slice(p, p + s) for p, s in zip(pads, image.shape))
    return est[sl].cpu().numpy()


def default_rl_halo(psf: np.ndarray, multiple: int = 16) -> int:
    """Halo (output voxels) that keeps blockwise RL within ~1e-3 of whole-volume RL: 3 PSF radii.

    Measured for 30 iterations, sd 3 voxels (radius 9): 16 px halo 1.7e-3, 24 px 5e-6 of the range.
    """
    reach = 3 * max(psf_reach(psf), 1)
    return int(-(-reach // multiple) * multiple)
