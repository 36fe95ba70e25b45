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
from dataclasses import asdict, dataclass, replace

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


#: Noise sd at half the normalised range (or, for the signal-independent part, at zero) above which training
#: inputs get the stack's noise added. Noise-free phantoms read at most 0.035 at half range and 0.009 at
#: zero (fine texture leaks into the estimate); Poisson noise of 100-300 photons at the brightest structure
#: reads 0.067-0.087 at half range, Gaussian read noise of 2% of the range 0.029 at zero.
INPUT_NOISE_THRESHOLD = (0.05, 0.02)
# Second-difference kernel scaled to unit variance for white noise (Immerkaer's noise estimator).
_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32) / 6.0


@dataclass(frozen=True)
class NoiseModel:
    """Signal-dependent noise of normalised planes: variance = ``gain`` * signal + ``offset`` (Poisson-Gaussian).

    ``used`` says whether training inputs get this noise (sd at half range or at zero above
    :data:`INPUT_NOISE_THRESHOLD`).
    """

    gain: float = 0.0
    offset: float = 0.0
    used: bool = False

    def sd(self, level: float) -> float:
        return math.sqrt(max(self.gain * level + self.offset, 0.0))

    def to_dict(self) -> dict:
        return {**asdict(self), "sd_at_half_range": round(self.sd(0.5), 5)}


def fit_noise_model(patches: np.ndarray, bins: int = 12) -> NoiseModel:
    """Fit variance = gain * mean + offset to (n, P, P) normalised planes.

    Each pixel's noise is read from the second-difference residual (blind to planes and ramps), its level
    from the 3x3 local mean; per quantile bin of level, the variance is the robust (MAD) variance of the
    residuals, and a non-negative least-squares line goes through the bins. On Poisson-Gaussian phantoms the
    gain is within about 30% of the truth and the offset within 10% when read noise dominates.
    """
    from scipy.ndimage import convolve, uniform_filter
    from scipy.optimize import nnls

    p = np.asarray(patches, np.float32)
    res = np.abs(np.stack([convolve(x, _LAPLACE, mode="reflect")[1:-1, 1:-1] for x in p])).ravel()
    mean = np.stack([uniform_filter(x, 3, mode="reflect")[1:-1, 1:-1] for x in p]).ravel()
    edges = np.quantile(mean, np.linspace(0, 1, bins + 1))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (mean >= lo) & (mean <= hi)
        if sel.sum() >= 64:
            xs.append(float(np.median(mean[sel])))
            ys.append(float((1.4826 * np.median(res[sel])) ** 2))
    if len(xs) < 2:
        return NoiseModel()
    (gain, offset), _ = nnls(np.stack([np.array(xs), np.ones(len(xs))], 1), np.array(ys))
    model = NoiseModel(float(gain), float(offset))
    return replace(model, used=model.sd(0.5) > INPUT_NOISE_THRESHOLD[0] or model.sd(0.0) > INPUT_NOISE_THRESHOLD[1])
