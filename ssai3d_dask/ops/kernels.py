"""2D blur kernels: rotated anisotropic Gaussians, motion lines and discs, centred and normalised to sum 1.

Used by the PSF bank (training pairs), the pretraining degradations and the phantoms' forward model.
"""

from __future__ import annotations

import math

import numpy as np


def gaussian_kernel2d(
    sigma_major: float, sigma_minor: float = 0.0, angle_deg: float = 0.0, size: int | None = None
) -> np.ndarray:
    """Normalised 2D Gaussian elongated along axis 0, rotated by ``angle_deg``.

    ``sigma_minor = 0`` gives a line-shaped (1D) Gaussian sampled on the grid
    (a tiny minor sigma keeps it well defined after rotation).
    """
    smin = max(float(sigma_minor), 0.3)
    smaj = max(float(sigma_major), smin)
    if size is None:
        size = 2 * int(math.ceil(3 * smaj)) + 1
    r = size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    t = math.radians(angle_deg)
    u = y * math.cos(t) + x * math.sin(t)  # along the major axis
    v = -y * math.sin(t) + x * math.cos(t)
    k = np.exp(-0.5 * ((u / smaj) ** 2 + (v / smin) ** 2))
    return (k / k.sum()).astype(np.float32)


def line_kernel2d(length: float, angle_deg: float = 0.0, size: int | None = None) -> np.ndarray:
    """Normalised uniform line (motion-like) blur of ``length`` px along axis 0, rotated."""
    size = size or (2 * int(math.ceil(length / 2)) + 3)
    r = size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    t = math.radians(angle_deg)
    u = y * math.cos(t) + x * math.sin(t)
    v = -y * math.sin(t) + x * math.cos(t)
    k = np.clip(length / 2 + 0.5 - np.abs(u), 0, 1) * np.clip(1.0 - np.abs(v), 0, 1)
    return (k / k.sum()).astype(np.float32)


def disc_kernel2d(radius: float) -> np.ndarray:
    """Normalised defocus disc with anti-aliased edge."""
    r = int(math.ceil(radius)) + 1
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    k = np.clip(radius + 0.5 - np.hypot(y, x), 0, 1)
    return (k / k.sum()).astype(np.float32)


def pad_kernel(k: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a square odd kernel to ``size`` (odd)."""
    p = (size - k.shape[0]) // 2
    return np.pad(k, p) if p > 0 else k
