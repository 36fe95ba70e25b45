"""Image-quality metrics with ground truth, and resolution estimates without it.

Functions take numpy or dask arrays. Sums (MSE, PSNR, NCC) are reduced
blockwise by dask, which is exact. SSIM is computed per block with a halo
wide enough for its window, which is also exact away from the volume border
(scikit-image itself excludes that border from the mean).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import dask.array as da
import numpy as np
from scipy import ndimage, optimize
from skimage.metrics import structural_similarity
from ssai3d_dask.errors import VolumeError

logger = logging.getLogger(__name__)

FWHM_PER_SD = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _as_float(a):
    return a.astype(np.float64) if isinstance(a, da.Array) else np.asarray(a, dtype=np.float64)


def _check(pred, truth) -> None:
    if tuple(pred.shape) != tuple(truth.shape):
        raise VolumeError(f"shapes differ: prediction {tuple(pred.shape)} vs truth {tuple(truth.shape)}; "
                         f"resample one onto the other's grid first")


def _value(x) -> float:
    return float(x.compute() if isinstance(x, da.Array) else x)


def mse(pred, truth) -> float:
    """Mean squared error."""
    _check(pred, truth)
    return _value(((_as_float(pred) - _as_float(truth)) ** 2).mean())


def psnr(pred, truth, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; ``data_range`` defaults to truth max - min."""
    if data_range is None:
        t = _as_float(truth)
        data_range = _value(t.max()) - _value(t.min())
    err = mse(pred, truth)
    return float("inf") if err == 0 else 10.0 * math.log10(data_range**2 / err)


def ncc(pred, truth) -> float:
    """Normalised cross-correlation (paper eq. 10): mean of the product of z-scored images."""
    _check(pred, truth)
    a, b = _as_float(pred), _as_float(truth)
    am, bm = _value(a.mean()), _value(b.mean())
    asd, bsd = _value(a.std()), _value(b.std())
    if asd == 0 or bsd == 0:
        return 0.0
    return _value(((a - am) * (b - bm)).mean()) / (asd * bsd)


def ssim(pred, truth, data_range: float, win_size: int = 7) -> float:
    """Mean SSIM (scikit-image, uniform window ``win_size``, constant ``data_range`` = L)."""
    _check(pred, truth)
    if not isinstance(pred, da.Array) and not isinstance(truth, da.Array):
        return float(structural_similarity(np.asarray(truth, np.float64), np.asarray(pred, np.float64),
                                           data_range=data_range, win_size=win_size))
    pred = da.asarray(pred).astype(np.float64)
    truth = da.asarray(truth).astype(np.float64).rechunk(pred.chunks)
    half = (win_size - 1) // 2

    def block_map(p, t):
        return structural_similarity(t, p, data_range=data_range, win_size=win_size, full=True)[1]

    smap = da.map_overlap(block_map, pred, truth, depth=half, boundary="reflect", dtype=np.float64)
    interior = smap[tuple(slice(half, s - half) for s in smap.shape)]
    return _value(interior.mean())


_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(pred, truth, data_range: float, win_size: int = 7) -> float:
    """Multi-scale SSIM (Wang et al. 2003): contrast-structure at each scale, luminance at the coarsest.

    Scales halve every axis by 2x2x2 means; as many of the 5 standard scales are
    used as the smallest axis allows (weights renormalised).
    """
    _check(pred, truth)
    p = np.asarray(pred, np.float64)
    t = np.asarray(truth, np.float64)
    n_scales = 0
    while n_scales < 5 and min(p.shape) // 2**n_scales >= win_size:
        n_scales += 1
    if n_scales == 0:
        raise VolumeError(f"volume {p.shape} too small for MS-SSIM with window {win_size}")
    weights = np.array(_MS_WEIGHTS[:n_scales]) / sum(_MS_WEIGHTS[:n_scales])
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for s in range(n_scales):
        mu_p, mu_t = ndimage.uniform_filter(p, win_size), ndimage.uniform_filter(t, win_size)
        vp = ndimage.uniform_filter(p * p, win_size) - mu_p**2
        vt = ndimage.uniform_filter(t * t, win_size) - mu_t**2
        cov = ndimage.uniform_filter(p * t, win_size) - mu_p * mu_t
        cs = (2 * cov + c2) / (vp + vt + c2)
        if s == n_scales - 1:
            lum = (2 * mu_p * mu_t + c1) / (mu_p**2 + mu_t**2 + c1)
            values.append(max(float(np.mean(lum * cs)), 1e-6))
        else:
            values.append(max(float(np.mean(cs)), 1e-6))
            p = _downsample2(p)
            t = _downsample2(t)
    return float(np.prod(np.array(values) ** weights))


def _downsample2(a: np.ndarray) -> np.ndarray:
    a = a[tuple(slice(0, (s // 2) * 2) for s in a.shape)]
    return a.reshape(*[x for s in a.shape for x in (s // 2, 2)]).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


# --- bead FWHM ----------------------------------------------------------------------------


def _gauss(x, a, mu, sd, b):
    return a * np.exp(-0.5 * ((x - mu) / sd) ** 2) + b


def _fit_fwhm(profile: np.ndarray) -> float | None:
    x = np.arange(len(profile), dtype=np.float64)
    b0 = float(np.min(profile))
    a0 = float(np.max(profile) - b0)
    if a0 <= 0:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            popt, _ = optimize.curve_fit(_gauss, x, profile, p0=(a0, float(np.argmax(profile)), 2.0, b0), maxfev=4000)
    except RuntimeError:
        return None
    sd = abs(popt[2])
    if not (0.2 < sd < len(profile)):
        return None
    return FWHM_PER_SD * sd


def find_beads(vol: np.ndarray, min_distance_px: int = 6, threshold_rel: float = 0.2,
               border_px: int = 8) -> np.ndarray:
    """Local maxima above ``threshold_rel`` x max, at least ``min_distance_px`` apart and from the border."""
    v = np.asarray(vol, np.float64)
    peaks = (v == ndimage.maximum_filter(v, size=2 * min_distance_px + 1)) & (v > threshold_rel * v.max())
    pts = np.argwhere(peaks)
    inside = np.all((pts >= border_px) & (pts < np.array(v.shape) - border_px), axis=1)
    return pts[inside]


def bead_fwhm(vol, voxel_size_um: Sequence[float], positions: np.ndarray | None = None,
              half_window_px: int = 12) -> dict[str, dict[str, float]]:
    """FWHM per axis from Gaussian fits of profiles through each bead centre.

    Returns
    -------
    dict
        For each axis ``z``, ``y``, ``x``: ``mean_um``, ``sd_um``, ``n`` (beads fitted).
    """
    v = np.asarray(vol, np.float64)
    pts = find_beads(v) if positions is None else np.asarray(positions, int)
    out = {}
    for axis, name in enumerate("zyx"):
        fw = []
        for p in pts:
            lo = max(p[axis] - half_window_px, 0)
            hi = min(p[axis] + half_window_px + 1, v.shape[axis])
            idx = list(p)
            idx[axis] = slice(lo, hi)
            f = _fit_fwhm(v[tuple(idx)])
            if f is not None:
                fw.append(f * voxel_size_um[axis])
        out[name] = {"mean_um": float(np.mean(fw)) if fw else float("nan"),
                     "sd_um": float(np.std(fw)) if fw else float("nan"), "n": len(fw)}
    return out


def tube_fwhm_mismatch(pred, truth, half_window_px: int = 12, min_distance_px: int = 6,
                       threshold_rel: float = 0.5) -> np.ndarray:
    """Axial FWHM mismatch of tubular objects against the truth (OT-CycleGAN's Fig. 1h), in px.

    At local maxima of the truth (tube centre lines, :func:`find_beads` with a tube threshold), the
    z profile through the point is fitted by a Gaussian in truth and prediction; returns
    ``|FWHM_pred - FWHM_truth|`` for every point where both fits succeed (tubes running along z have no
    axial peak and drop out).
    """
    p, t = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    _check(p, t)
    out = []
    for pt in find_beads(t, min_distance_px, threshold_rel, border_px=half_window_px):
        idx = list(pt)
        idx[0] = slice(pt[0] - half_window_px, pt[0] + half_window_px + 1)
        ft, fp = _fit_fwhm(t[tuple(idx)]), _fit_fwhm(p[tuple(idx)])
        if ft is not None and fp is not None:
            out.append(abs(fp - ft))
    return np.asarray(out)


# --- Fourier resolution -------------------------------------------------------------------


def fourier_resolution(vol, voxel_size_um: Sequence[float], energy: float = 0.99,
                       crop_px: int = 256) -> dict[str, float]:
    """Resolution estimate per axis (um) from the 1D power spectra along that axis.

    For each axis, the power spectrum along it is averaged over the other axes
    (mean removed, Hann window); the noise floor is the median power of the
    top 10% of frequencies; the cut-off is the frequency below which
    ``energy`` of the power above the floor lies; the resolution is 1 / cut-off.
    Larger volumes are cropped to a central block of at most ``crop_px`` per
    axis (bounded memory). Works without ground truth, so raw and restored
    real data can be compared axis by axis.
    """
    crop = tuple(slice(max(0, (s - crop_px) // 2), max(0, (s - crop_px) // 2) + min(s, crop_px)) for s in vol.shape)
    v = vol[crop]
    v = np.asarray(v.compute() if isinstance(v, da.Array) else v, np.float64)
    out = {}
    for axis, name in enumerate("zyx"):
        n = v.shape[axis]
        a = np.moveaxis(v, axis, -1)
        a = (a - a.mean(axis=-1, keepdims=True)) * np.hanning(n)
        power = (np.abs(np.fft.rfft(a, axis=-1)) ** 2).reshape(-1, n // 2 + 1).mean(axis=0)
        freqs = np.fft.rfftfreq(n, d=voxel_size_um[axis])
        floor = np.median(power[int(0.9 * len(power)):]) if len(power) > 10 else 0.0
        sig = np.clip(power[1:] - floor, 0, None)
        if sig.sum() <= 0:
            out[name] = float("nan")
            continue
        cum = np.cumsum(sig) / sig.sum()
        fc = freqs[1:][min(np.searchsorted(cum, energy), len(cum) - 1)]
        out[name] = float(1.0 / fc)
    return out


def compare(pred, truth, data_range: float | None = None) -> dict[str, float]:
    """PSNR, SSIM, MS-SSIM, MSE and NCC of ``pred`` against ``truth``."""
    t = np.asarray(truth.compute() if isinstance(truth, da.Array) else truth, np.float64)
    rng = float(t.max() - t.min()) if data_range is None else data_range
    out = {"psnr_db": psnr(pred, truth, rng), "ssim": ssim(pred, truth, rng), "mse": mse(pred, truth),
           "ncc": ncc(pred, truth)}
    if min(pred.shape) >= 7:
        out["ms_ssim"] = ms_ssim(np.asarray(pred.compute() if isinstance(pred, da.Array) else pred), t, rng)
    return out
