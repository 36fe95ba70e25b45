"""The stack's axial blur, estimated from the stack itself (for a PSF bank centred on it).

The axial direction of a stack is its lateral direction seen through an extra blur (the axial PSF is
wider than the lateral one) and, when ``dz > dx``, through z sampling and the linear interpolation that
puts z on the lateral grid. So the power spectrum of axial profiles (z resampled exactly as inference
resamples it) should match that of lateral profiles after the same degradation, for the right Gaussian sd.
This module finds that sd: it reads 96 small random windows lazily (at most ~40 MiB as float32, whatever
the volume), keeps those with signal, takes Hann-windowed profiles of length ``L`` along z (resampled) and
along x (raw planes), and for every candidate sd degrades the lateral profiles with the axial forward model of the
training pairs (:func:`ssai3d_dask.adaptation.psf.axial_forward`) and compares log spectra over the
frequencies where the lateral spectrum stands well above the noise floor and the axial spectrum above its own
(a free offset absorbs intensity differences between the two sets). The noise floor comes from one
Poisson-Gaussian fit over all windows (:func:`_noise_power`). The uncertainty is the 16-84% range over
bootstrap resamples of the windows.

Assumptions, and where it fails: the structure must be statistically isotropic (similar along z and x):
stacks of layered tissue or of objects elongated along z bias it; an axial PSF that is not Gaussian is
summarised by the Gaussian of the closest spectrum. A tilted axial PSF reads low, because along one z-profile its
shear looks like a narrower blur (the simulator's shift-variant PSF, tilts up to 20 deg, sd 3-8 px: median -26%,
worst -58%; benchmarks/results/psf_estimate_shift_variant.md), and so does a blur narrower than the z step (true sd
1.4-1.9 px at z step 3: -13% to -25%, sparse tubes at 30 photons to -53%; psf_estimate_small.md). Profiles
are up to 128 px long (:func:`profile_length`):
on stacks that allow it (136 x 192 x 192 phantoms, benchmarks/results/psf_estimate_large.md) it is within 15% on
47 of 48 tissue and tube phantoms at sd 3-14 px, noise-free and at 100 and 30 photons (worst -16%, tubes sd 14
px at 30 photons; median error 6.8%). Stacks at most 128 px wide keep 64-px profiles, where a wide blur leaves
one or two informative frequencies: noise-free it is within 15% at sd 3-14 px, with noise at sd 3-6 px in 13 of
16 phantoms, and wide blur under noise reads low (sd 10-14 px at 30-100 photons: -11% to -45%;
benchmarks/results/psf_estimate.md). On the real confocal bead stack (150 px wide: 80-px profiles) it reads
10.4 px where the beads' measured PSF gives ~9.4-9.9 px.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import dask
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from skimage.restoration import estimate_sigma

from ssai3d_dask.adaptation.psf import axial_forward
from ssai3d_dask.errors import VolumeError
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.ops.denoise import fit_noise_model
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.ops.resample import resample_z_block

logger = logging.getLogger(__name__)

SIGMAS = np.round(np.arange(0.25, 20.01, 0.25), 2)
#: Frequencies whose axial power is below this fraction of the lowest bin's are left out of the fit: there
#: the phantom renderer's or the camera's rounding, not the blur, sets the spectrum.
DYNAMIC_RANGE = 1e-3
#: Spread of a bank centred on the estimate (the paper's 3-7 px bank spans x0.6..x1.4 of 5 px): the variant
#: benchmarks/fidelity.py's ssai3d-auto column runs, kept so archive/fidelity_bank.md can be reproduced.
AUTO_SPREAD = (0.6, 0.8, 1.0, 1.2, 1.4)


#: The auto bank's centre sits this far past the estimate. A network adapted on a bank inverts only part of
#: the blur it was trained on, and a bank a little wider than the stack's blur restored better each time it was
#: measured: the real confocal beads (extra axial sd ~9.4 px from their measured PSF) gave axial/lateral FWHM
#: 2.30 with a bank centred on 9.4 px and 2.00 centred on 12.06 px (1.28x); on the phantoms of
#: benchmarks/fidelity.py the paper's bank (centre 5 px, 1.26x the true 3.97 px) restored beads and strands
#: better than a bank centred on an accurate estimate (archive/fidelity_bank.md). Where it made no difference: strands
#: blurred by sd 8 px, adapted on that stack, gave 11.73-11.75 dB with banks centred on the estimate (6.9 px),
#: 1.25x past it and on the truth (archive/fidelity_each.md).
BANK_LEAN = 1.25


def auto_bank_widths(sigmas_px: tuple[float, ...], estimate_px: float) -> tuple[float, ...]:
    """``--psf-bank wide``: the bank ``sigmas_px`` scaled by ``max(1, BANK_LEAN * estimate / median width)``.

    The bank only ever widens: narrower banks than the paper's 3-7 px did not restore better on the phantoms
    (archive/fidelity_bank.md), nor on tubes blurred only 1.4-2.4 px along z (bank_small_blur.md: the paper bank ahead
    of one centred on the estimate by 0.34-0.90 dB, noisy or not), so a stack blurred less than ~4 px keeps the
    paper's bank. A stack blurred beyond it
    (the real confocal beads: sd ~9.4 px on their 0.0225 um grid) gets a bank centred :data:`BANK_LEAN` times
    past its estimate (benchmarks/results/beads_real.md).
    """
    centre = float(np.median(sigmas_px))
    scale = max(1.0, BANK_LEAN * estimate_px / centre)
    return tuple(round(s * scale, 3) for s in sigmas_px)


@dataclass(frozen=True)
class AxialBlurEstimate:
    """Extra axial Gaussian sd (lateral px) relative to the lateral blur, with its 16-84% bootstrap range."""

    sigma_px: float
    low_px: float
    high_px: float
    z_factor: float
    band_cycles_per_px: tuple[float, float]
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"axial blur sd {self.sigma_px:.2f} px (16-84%: {self.low_px:.2f}-{self.high_px:.2f}) relative to "
                f"the lateral blur; z step {self.z_factor:.3g} x the lateral pixel; {self.windows} windows, "
                f"frequencies {self.band_cycles_per_px[0]:.3f}-{self.band_cycles_per_px[1]:.3f} cycles/px")


#: Lateral context (px) read on each side of a window where the plane is wide enough: the candidate blurs see
#: the real neighbourhood instead of a reflected edge (at sd 14 px on 64-px profiles the reflection biased the
#: estimate low: -6.4% against -3.9% with 32 px of context).
CONTEXT_PX = 32
#: The band also ends where the axial spectrum stands less than this factor above its own noise floor: bins
#: of pure noise only test the floor, not the blur, and pulled wide blurs low (tubes, sd 10 px, 100 photons:
#: -30% with them, -15% without).
AXIAL_SNR = 1.5
#: The shortest profile the estimate uses (px on the isotropic grid).
MIN_LENGTH = 32
#: The length stacks up to 128 px wide keep (the only length before profiles could grow), and the one a window
#: of :data:`BASE_ROWS` rows is sized for.
BASE_LENGTH = 64
BASE_ROWS = 8
#: The longest (where the stack is deep and wide enough). A blur of sd 10-14 px leaves one or two frequencies
#: above the noise on 64-px profiles; 128-px profiles double them (psf_estimate_large.md).
MAX_LENGTH = 128


def _power(profiles: np.ndarray) -> np.ndarray:
    """Power spectra (bins 1..L/2) of (..., L) profiles, each mean-removed and Hann-windowed."""
    p = profiles - profiles.mean(axis=-1, keepdims=True)
    p = p * np.hanning(p.shape[-1])
    return np.abs(np.fft.rfft(p, axis=-1)[..., 1:]) ** 2


def _spectra(profiles: np.ndarray) -> np.ndarray:
    """Mean power spectrum of (n, L) profiles."""
    return _power(profiles).mean(axis=0)


def _interp(profiles: np.ndarray, f: float, rng: np.random.Generator, phases: int = 8) -> np.ndarray:
    """z sampling every ``f`` px and linear interpolation back along the last axis, at ``phases`` random
    sampling phases spread over the profiles (the inference interpolation, as in the training pairs)."""
    if f <= 1:
        return profiles
    flat = torch.from_numpy(np.ascontiguousarray(profiles, np.float32).reshape(-1, profiles.shape[-1]))
    out = torch.empty_like(flat)
    groups = np.array_split(rng.permutation(len(flat)), phases)
    for g in groups:
        idx = torch.from_numpy(g)
        out[idx] = axial_forward(flat[idx], f, dim=-1, phase=float(rng.uniform(0, f)))
    return out.numpy().reshape(profiles.shape)


def _windows(vol: Volume, norm: Normalization, n: int, length: int, rows: int, seed: int):
    geom = isotropic_geometry(vol.shape, vol.voxel_size_um)
    f = geom.z_factor
    z, y, x = vol.shape
    z_in = int(math.ceil((length - 1) / f)) + 2
    if z_in > z or x < length:
        raise VolumeError(f"{vol.source}: too small to estimate the axial blur ({z} planes, {x} px wide; needs "
                          f"{z_in} planes and {length} px) -- give the PSF bank's widths instead")
    rng = np.random.default_rng(seed)
    pad = min(CONTEXT_PX, (x - length) // 2)
    width = length + 2 * pad
    starts = [(int(rng.integers(0, z - z_in + 1)), int(rng.integers(0, y - rows + 1)),
               int(rng.integers(0, x - width + 1))) for _ in range(n)]
    crops = dask.compute(*[vol.data[a:a + z_in, b:b + rows, c:c + width] for a, b, c in starts])
    out = []
    for (z0, _, _), crop in zip(starts, crops):
        crop = norm.apply(np.asarray(crop, np.float32))
        if crop.max() < 0.2 or crop.std() < 0.02:  # background: no structure to measure
            continue
        o0 = int(math.ceil(z0 * f - 1e-9))
        axial = resample_z_block(crop, z0, slice(o0, o0 + length), f)  # (L, rows, width)
        out.append((axial.reshape(length, -1).T, crop))
    return out, f, pad


def _noise_power(wins: list, length: int) -> np.ndarray:
    """White-noise power per spectral bin of each window's Hann-windowed profiles.

    The noise of a camera is Poisson-Gaussian, so its variance follows the signal: one variance = gain * level
    + offset line (:func:`ssai3d_dask.ops.denoise.fit_noise_model`) is fitted on all windows' planes together,
    and each window's mean variance is read off it at the window's mean level (exact for a linear model). A
    per-window wavelet (MAD) estimate, used before, reads the noise of the darkest pixels, which is 0.5-0.65 of
    the mean sd under Poisson noise: the band then ran into noise-dominated bins and the estimate failed
    (tissue phantom sd 3 px, 30 photons: 0.60 px). Noise-free windows (no fit) fall back to the wavelet estimate.
    """
    crops = [c for _, c in wins]
    nm = fit_noise_model(np.concatenate(crops))
    if nm.gain > 0 or nm.offset > 0:
        var = np.array([max(nm.gain * float(c.mean()) + nm.offset, 0.0) for c in crops])
    else:
        var = np.array([float(estimate_sigma(c, channel_axis=None)) ** 2 if min(c.shape[:2]) >= 4 else 0.0
                        for c in crops])
    return var * float((np.hanning(length) ** 2).sum())


def profile_length(shape: tuple[int, int, int], z_factor: float, length: int = MAX_LENGTH) -> int:
    """The profile length the estimate uses on a stack of raw ``shape``: ``length`` px, shortened (to a
    multiple of 8, at least :data:`MIN_LENGTH`) to what the stack's depth on the isotropic grid allows and,
    beyond :data:`BASE_LENGTH`, to what leaves :data:`CONTEXT_PX` of lateral context on each side."""
    depth = int(math.floor((shape[0] - 2) * z_factor)) + 1  # isotropic planes a window can span
    return max(MIN_LENGTH, min(length, depth, max(BASE_LENGTH, shape[2] - 2 * CONTEXT_PX), shape[2]) // 8 * 8)


def estimate_axial_blur(vol: Volume, norm: Normalization, seed: int = 0, n_windows: int = 96,
                        length: int = MAX_LENGTH, rows: int | None = None, n_boot: int = 64) -> AxialBlurEstimate:
    """Estimate the stack's extra axial blur (see the module docstring). Reads ``n_windows`` small windows.

    Profiles are ``length`` px long where the stack allows (:func:`profile_length`); each window spans
    ``rows`` rows (default :data:`BASE_ROWS` up to :data:`BASE_LENGTH` px, fewer in proportion beyond: 4 at
    128 px, so a longer window reads about as many voxels).
    """
    geom = isotropic_geometry(vol.shape, vol.voxel_size_um)
    length = profile_length(vol.shape, geom.z_factor, length)
    rows = rows or max(2, min(BASE_ROWS, round(BASE_ROWS * BASE_LENGTH / length)))
    wins, f, pad = _windows(vol, norm, n_windows, length, rows, seed)
    if len(wins) < 4:
        raise VolumeError(f"{vol.source}: only {len(wins)} of {n_windows} sampled windows hold structure; the "
                          f"axial blur cannot be estimated -- give the PSF bank's widths instead")
    rng = np.random.default_rng(seed + 1)
    ax = np.stack([_spectra(a) for a, _ in wins])  # (windows, K)
    lat_profiles = np.stack([c.reshape(-1, c.shape[-1]) for _, c in wins])  # (windows, profiles, width)
    noise_var = _noise_power(wins, length)
    core = slice(pad, pad + length)
    lat = _power(lat_profiles[..., core]).mean(1)
    model = np.stack([_power(_interp(gaussian_filter1d(lat_profiles, s, axis=-1, mode="reflect")[..., core], f,
                                     rng)).mean(1) for s in SIGMAS])  # (sigmas, windows, K)
    # White noise in the raw planes reaches the axial profiles through the z interpolation only (it is not
    # blurred): its axial spectrum is the lateral noise floor times this transfer.
    white = np.random.default_rng(seed + 2).standard_normal((256, length)).astype(np.float32)
    noise_tf = _spectra(_interp(white, f, rng)) / _spectra(white)

    def fit(idx: np.ndarray) -> tuple[float, tuple[int, int]]:
        a, la, m = ax[idx].mean(0), lat[idx].mean(0), model[:, idx].mean(1)
        floor = noise_var[idx].mean()  # white noise power per bin
        m = m + floor * noise_tf[None]
        ok = (la > 10 * floor) & (a > DYNAMIC_RANGE * a[0]) & (a > AXIAL_SNR * floor * noise_tf)
        k_hi = max(3, int(np.argmin(ok)) if not ok.all() else len(ok))  # the first bin that fails ends the band
        band = slice(0, k_hi)
        d = np.log(a[band])[None] - np.log(m[:, band])
        cost = ((d - d.mean(1, keepdims=True)) ** 2).mean(1)
        i = int(np.argmin(cost))
        if 0 < i < len(SIGMAS) - 1:  # parabolic refinement between grid points
            c0, c1, c2 = cost[i - 1:i + 2]
            den = c0 - 2 * c1 + c2
            step = 0.5 * (c0 - c2) / den if den > 0 else 0.0
            return float(SIGMAS[i] + np.clip(step, -1, 1) * (SIGMAS[1] - SIGMAS[0])), (1, k_hi)
        return float(SIGMAS[i]), (1, k_hi)

    sigma, (k0, k1) = fit(np.arange(len(wins)))
    boots = [fit(rng.integers(0, len(wins), len(wins)))[0] for _ in range(n_boot)]
    lo, hi = np.percentile(boots, [16, 84])
    est = AxialBlurEstimate(round(sigma, 3), round(float(lo), 3), round(float(hi), 3), round(f, 4),
                            (round(k0 / length, 4), round(k1 / length, 4)), len(wins))
    logger.info("%s", est)
    return est
