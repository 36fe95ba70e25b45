"""How far any linear restoration can narrow the real confocal beads: an oracle Wiener bound on axial / lateral FWHM.

Issue 12 asks for a restored axial bead FWHM within 15% of the lateral one on
../shared/data/confocal_beads_mpicbg/Bead_Image1_crop.tif (beads_real.md: SSAI-3D reaches 2.00). This script
asks what the stack itself allows. Every number of the model is measured from the stack:

- each bead is a 3D Gaussian with the median lateral sd and the median axial sd of the linearly interpolated
  stack (Gaussian fits through the bead peaks, as in beads_real.py) and the median raw peak height;
- the raw stack samples it every ``z step / lateral pixel`` isotropic px along z (5.56 here), at a random
  sub-step phase, with the stack's Poisson-Gaussian noise (variance = gain x intensity + floor, fitted to the
  local noise variance binned by intensity), its sd optionally scaled;
- the restoration is the oracle Wiener filter to the isotropic bead (the lateral sd on all three axes): it is
  given the bead's exact spectrum and the noise power, so no linear, shift-invariant method can beat its mean
  squared error (the noise power is that of one bead's share of the stack, a 41 x 64 x 64 raw window: the
  stack holds about one bead per 41 x 75 x 75). Its output is band-limited to the raw z Nyquist frequency 1 / (2 z step); evaluated on the
  isotropic grid by exact trigonometric interpolation.

Printed: the axial / lateral FWHM ratio of the oracle's restored bead (median over noise draws and sub-step
phases) at noise x0 (the sampling limit alone), x0.25, x1 (the stack as measured) and x2, and the same for the
raw stack without restoration (trigonometric interpolation, to check the model against the measured interp
ratio); then sharper, noisier linear inverses at the measured noise (the Wiener noise term down-weighted). A non-linear method (a network, RL with positivity) can go below the bound only by adding content the
samples do not carry: a prior that the object is a point.

Run: python benchmarks/beads_limit.py  (about 2 minutes on 2 CPU cores). Writes benchmarks/results/beads_limit.md.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from ssai3d_dask.evaluation.metrics import _fit_fwhm, bead_fwhm, find_beads
from ssai3d_dask.io.volume import open_volume

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "confocal_beads_mpicbg" / "Bead_Image1_crop.tif"
RESULTS = ROOT / "benchmarks" / "results"
FWHM_PER_SD = 2.0 * math.sqrt(2.0 * math.log(2.0))
HALF_WINDOW_PX = 40  # profile half-length for the Gaussian fits, as in beads_real.py


def measure(path: Path) -> dict[str, float]:
    """Bead sd (lateral, axial; isotropic px), raw peak above background, noise sd at the beads, z step (px)."""
    vol = open_volume(path)
    raw = np.asarray(vol.data.compute(), np.float64)
    step = vol.voxel_size_um[0] / vol.voxel_size_um[2]
    nz_iso = int(round((raw.shape[0] - 1) * step)) + 1
    interp = ndimage.zoom(raw, ((nz_iso - 1) / (raw.shape[0] - 1), 1, 1), order=1)  # linear along z only
    pos = find_beads(interp, min_distance_px=12, threshold_rel=0.3, border_px=12)
    if len(pos) == 0:
        raise SystemExit(f"{path}: no beads found")
    fz, fx = [], []
    for p in pos:
        fw = bead_fwhm(interp, (1.0, 1.0, 1.0), positions=p[None], half_window_px=HALF_WINDOW_PX)
        fz.append(fw["z"]["mean_um"])
        fx.append(fw["x"]["mean_um"])
    background = float(np.median(raw))
    peaks = [raw[:, p[1], p[2]].max() - background for p in pos]
    gain, floor = noise_model(raw)
    return {"beads": len(pos), "sd_lateral_px": float(np.nanmedian(fx)) / FWHM_PER_SD,
            "sd_axial_px": float(np.nanmedian(fz)) / FWHM_PER_SD, "peak": float(np.median(peaks)),
            "background": background, "noise_gain": gain, "noise_floor": floor, "z_step_px": float(step),
            "interp_ratio": float(np.nanmedian(fz) / np.nanmedian(fx)), "lateral_um_per_px": vol.voxel_size_um[2]}


def noise_model(raw: np.ndarray) -> tuple[float, float]:
    """Poisson-Gaussian noise, variance = gain x intensity + floor, fitted to the local noise variance binned by
    intensity. The noise is what a [1, 2, 1] / 4 smoothing along y removes, then differentiated twice along x:
    the beads (sd ~3 px) survive both nearly unchanged, white noise keeps 2.25 x its variance."""
    resid = raw - ndimage.correlate1d(raw, [0.25, 0.5, 0.25], axis=1, mode="reflect")
    second = (resid[:, :, 2:] - 2 * resid[:, :, 1:-1] + resid[:, :, :-2]) / 1.5
    level = ndimage.gaussian_filter(raw, (0, 3, 3))[:, :, 1:-1]
    means, variances = [], []
    for lo, hi in ((0, 2), (2, 10), (10, 30), (30, 60), (60, np.inf)):
        sel = (level >= lo) & (level < hi)
        if sel.sum() >= 100:
            means.append(float(raw[:, :, 1:-1][sel].mean()))
            variances.append(float(second[sel].var()))
    gain, floor = np.polyfit(means, variances, 1)
    return float(gain), float(max(floor, 0.0))


def oracle_ratio(m: dict[str, float], noise_scale: float, rng: np.random.Generator, restore: bool = True,
                 regularization: float = 1.0, n_z: int = 41, n_xy: int = 64) -> tuple[float, float]:
    """Axial / lateral FWHM of one noisy bead after the oracle Wiener filter (or none: ``restore=False``), and
    the restored noise sd over the restored peak. The noise is the stack's, its sd scaled by ``noise_scale``. ``regularization`` < 1 under-weights the noise: a sharper,
    noisier linear inverse than the mean-square optimum (1)."""
    s, sl, sa = m["z_step_px"], m["sd_lateral_px"], m["sd_axial_px"]
    z0 = (n_z // 2 + rng.uniform(-0.5, 0.5)) * s  # the bead centre, in isotropic px, at a random sub-step phase
    c = n_xy // 2
    zr = np.arange(n_z)[:, None, None] * s
    y = np.arange(n_xy)[None, :, None]
    x = np.arange(n_xy)[None, None, :]
    clean = m["background"] + m["peak"] * np.exp(-(zr - z0) ** 2 / (2 * sa ** 2) - ((y - c) ** 2 + (x - c) ** 2) / (2 * sl ** 2))
    variance = noise_scale ** 2 * (m["noise_gain"] * clean + m["noise_floor"])
    noise = rng.normal(0.0, 1.0, clean.shape) * np.sqrt(variance)
    spec, noise_spec = np.fft.fftn(clean + noise), np.fft.fftn(noise)
    fz = np.fft.fftfreq(n_z, d=s)  # cycles per isotropic px; n_z odd: no Nyquist bin
    if restore:
        h = np.exp(-2 * math.pi ** 2 * (sa ** 2 - sl ** 2) * fz ** 2)[:, None, None]  # the extra axial blur
        target = np.abs(np.fft.fftn(clean)) ** 2 / h ** 2  # the isotropic bead's power (aliasing negligible)
        noise_power = regularization * variance.sum()  # independent noise: a flat spectrum of this power
        gain = h * target / (h ** 2 * target + noise_power) if noise_power > 0 else 1.0 / h  # no noise: the inverse
        spec, noise_spec = spec * gain, noise_spec * gain
    lateral = np.fft.ifft(np.fft.ifft(spec, axis=2), axis=1)  # back to (fz, y, x); z stays in frequency
    zi = np.arange(0.0, n_z * s, 1.0)  # trigonometric interpolation along z onto the isotropic grid
    axial = (np.exp(2j * math.pi * np.outer(zi, fz)) @ lateral[:, c, c]).real / n_z
    k = int(np.argmax(axial))
    across = (np.exp(2j * math.pi * zi[k] * fz) @ lateral[:, c, :]).real / n_z
    w = HALF_WINDOW_PX  # the profiles beads_real.py fits
    fw_z = _fit_fwhm(axial[max(k - w, 0):k + w + 1])
    fw_x = _fit_fwhm(across[max(c - w, 0):c + w + 1])
    noise_to_peak = float(np.fft.ifftn(noise_spec).real.std() / (axial.max() - m["background"]))
    if fw_z is None or fw_x is None:
        return float("nan"), noise_to_peak
    return fw_z / fw_x, noise_to_peak


def summarize(rs: list[tuple[float, float]]) -> dict[str, float]:
    ratio, noise = np.array(rs, np.float64).T
    q1, med, q3 = np.nanpercentile(ratio, [25, 50, 75])
    return {"ratio": float(med), "ratio_q1": float(q1), "ratio_q3": float(q3), "noise_to_peak": float(np.median(noise))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--draws", type=int, default=40, help="noise draws (each at a random sub-step z phase) per row")
    ap.add_argument("--out", type=Path, default=RESULTS / "beads_limit.md")
    args = ap.parse_args()
    m = measure(args.data)
    rng = np.random.default_rng(0)
    sd_peak = math.sqrt(m["noise_gain"] * (m["peak"] + m["background"]) + m["noise_floor"])
    fmt = "{ratio:.2f} [{ratio_q1:.2f}, {ratio_q3:.2f}]"
    noise_rows, reg_rows, res = [], [], {"noise": {}, "regularization": {}}
    for scale in (0.0, 0.25, 1.0, 2.0):
        raw = summarize([oracle_ratio(m, scale, rng, restore=False) for _ in range(args.draws)])
        wiener = summarize([oracle_ratio(m, scale, rng) for _ in range(args.draws)])
        res["noise"][scale] = {"unrestored": raw, "oracle_wiener": wiener}
        snr = f"{m['peak'] / (scale * sd_peak):.0f}" if scale else "inf"
        noise_rows.append(f"| x{scale:g} | {scale * sd_peak:.2f} | {snr} | {fmt.format(**raw)} | {fmt.format(**wiener)} "
                          f"| {100 * wiener['noise_to_peak']:.1f} |")
        print(noise_rows[-1], flush=True)
    for reg in (1.0, 1e-1, 1e-2):  # weaker still, the fits follow the amplified noise (ratios < the 0-noise bound)
        r = summarize([oracle_ratio(m, 1.0, rng, regularization=reg) for _ in range(args.draws)])
        res["regularization"][reg] = r
        reg_rows.append(f"| {reg:g} | {fmt.format(**r)} | {100 * r['noise_to_peak']:.1f} |")
        print(reg_rows[-1], flush=True)
    um = m["lateral_um_per_px"]
    lines = ["# Real confocal beads: what a linear restoration can reach (oracle Wiener bound)", "",
             f"Command: `python benchmarks/beads_limit.py`. Data: {args.data.name}. Measured from the stack "
             f"({m['beads']} beads, linear z interpolation): lateral FWHM {m['sd_lateral_px'] * FWHM_PER_SD * um:.3f} um "
             f"(sd {m['sd_lateral_px']:.2f} px), axial FWHM {m['sd_axial_px'] * FWHM_PER_SD * um:.3f} um "
             f"(sd {m['sd_axial_px']:.2f} px; extra axial blur sd "
             f"{math.sqrt(m['sd_axial_px'] ** 2 - m['sd_lateral_px'] ** 2):.2f} px), ratio {m['interp_ratio']:.2f}; "
             f"z step {m['z_step_px']:.2f} px (z Nyquist {1 / (2 * m['z_step_px']):.3f} cycles/px); median raw "
             f"bead peak {m['peak']:.0f} above a background of {m['background']:.0f}; noise variance "
             f"{m['noise_gain']:.3f} x intensity + {m['noise_floor']:.3f} (sd {sd_peak:.2f} at the median peak).", "",
             f"Median [IQR] over {args.draws} noise draws, each at a random sub-step z phase; one bead in a "
             "41 x 64 x 64 raw window (the stack holds about one bead per 41 x 75 x 75).", "",
             "## The mean-square-optimal linear restoration, by noise level", "",
             "| noise | sd at the peak | peak SNR | axial / lateral, no restoration | axial / lateral, oracle Wiener "
             "| restored noise sd / peak (%) |", "|---|---|---|---|---|---|", *noise_rows, "",
             "## Sharper linear inverses at the measured noise (the Wiener noise term scaled down)", "",
             "| noise weight | axial / lateral | restored noise sd / peak (%) |", "|---|---|---|", *reg_rows, "",
             "Issue 12's target is a ratio <= 1.15; on this stack SSAI-3D with default settings reaches 2.00, RL "
             "with the measured PSF 3.34 (it narrows the lateral FWHM too), interpolation 3.35 (beads_real.md).", "",
             "```", json.dumps({"measured": m, "bound": res}, indent=1), "```"]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
