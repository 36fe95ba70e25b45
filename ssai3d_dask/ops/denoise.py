"""Denoising without clean data, applied to lateral planes before pair synthesis and to axial slices at inference.

The denoiser is non-local means (scikit-image) whose filtering strength ``h``
is chosen by Noise2Self's J-invariance calibration
(``skimage.restoration.calibrate_denoiser``): the self-supervised loss of the
masked denoiser tracks the true error, so the parameter minimising it is
chosen from the stack itself. The same calibrated parameter is stored with
the model and applied to every XZ/YZ slice ("denoised using the same
denoising network", paper Methods).

Non-local means is local (a pixel depends on a window of radius
``RADIUS_PX``) and its parameters are fixed once calibrated, so a tile gives
the same result as the whole slice away from the tile edge: restoration adds
this radius to its halo. (Wavelet shrinkage was rejected for this reason: its
thresholds depend on the statistics of the whole image.)

``auto`` turns denoising on when scikit-image's wavelet estimate of the noise
sd exceeds ``AUTO_THRESHOLD`` of the normalised intensity range. That
estimate also responds to sharp edges, so sparse binary-looking data can read
as noisy; force ``on`` or ``off`` when you know better.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)

#: Noise sd (fraction of the normalised range) above which ``--denoise auto`` switches on.
AUTO_THRESHOLD = 0.02
PATCH_SIZE = 5
PATCH_DISTANCE = 6
#: Radius (px) of the neighbourhood a denoised pixel depends on.
RADIUS_PX = PATCH_SIZE // 2 + PATCH_DISTANCE


@dataclass(frozen=True)
class Denoiser:
    """A calibrated 2D non-local-means denoiser; ``h`` in normalised intensity units (None = off)."""

    h: float | None = None
    estimated_noise: float = 0.0
    mode: str = "off"

    @property
    def enabled(self) -> bool:
        return self.h is not None and math.isfinite(self.h) and self.h > 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Denoise one 2D image or a stack of 2D images (..., H, W)."""
        if not self.enabled:
            return image
        from skimage.restoration import denoise_nl_means

        img = np.asarray(image, np.float32)
        if img.ndim == 2:
            return denoise_nl_means(img, h=self.h, sigma=self.estimated_noise, patch_size=PATCH_SIZE,
                                    patch_distance=PATCH_DISTANCE, fast_mode=True).astype(np.float32)
        flat = img.reshape(-1, *img.shape[-2:])
        return np.stack([self(p) for p in flat]).reshape(img.shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Denoiser:
        return cls(**d) if d else cls()


def estimate_noise(patches: np.ndarray) -> float:
    """Median over patches of scikit-image's wavelet noise-sd estimate.

    Constant patches (empty background: common in sparse volumes) have no estimate (NaN) and are left
    out; with no estimate at all the noise is taken as 0.
    """
    from skimage.restoration import estimate_sigma

    est = np.array([estimate_sigma(p) if np.ptp(p) > 0 else np.nan for p in patches], np.float64)
    est = est[np.isfinite(est)]
    return float(np.median(est)) if est.size else 0.0


def calibrate(patches: np.ndarray, mode: str = "auto", n_calib: int = 8) -> Denoiser:
    """Choose a denoiser for these normalised lateral patches (n, P, P).

    Parameters
    ----------
    mode : "auto", "on" or "off"
    """
    if mode not in ("auto", "on", "off"):
        raise SettingsError(f"denoise mode must be auto, on or off, got {mode!r}")
    noise = estimate_noise(patches[: max(n_calib, 16)])
    if mode == "on" and noise <= 0:
        logger.warning("denoising asked for, but the sampled patches show no measurable noise; denoising off")
    if mode == "off" or (mode == "auto" and noise < AUTO_THRESHOLD) or noise <= 0:
        logger.info("denoising off (mode %s, estimated noise sd %.4f)", mode, noise)
        return Denoiser(None, noise, "off")
    from skimage.restoration import calibrate_denoiser, denoise_nl_means

    grid = {"h": [float(noise * f) for f in (0.1, 0.3, 0.5, 0.7, 0.9, 1.2)], "sigma": [noise],
            "patch_size": [PATCH_SIZE], "patch_distance": [PATCH_DISTANCE], "fast_mode": [True]}
    # J-invariant calibration on a mosaic of patches: one loss for the whole set.
    varied = [p for p in patches if np.ptp(p) > 0] or list(patches)
    mosaic = np.concatenate(varied[:n_calib], axis=1).astype(np.float64)
    _, (params, losses) = calibrate_denoiser(mosaic, denoise_nl_means, grid, extra_output=True)
    best = params[int(np.argmin(losses))]
    logger.info("denoising on: noise sd %.4f, calibrated h %.4f (J-invariant loss)", noise, best["h"])
    return Denoiser(float(best["h"]), noise, mode)
