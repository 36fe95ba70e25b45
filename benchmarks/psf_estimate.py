"""How well `ssai3d info --psf` (the axial-blur estimate behind `--psf-bank auto`) reads a known blur.

Phantoms with a known Gaussian axial PSF: tissue (nuclei and neurites) and tubes, 96 x 128 x 128 truth voxels,
lateral sd 0.5 px, axial sd 3, 6, 10 and 14 px, z sampled every voxel (zf 1) or every third (zf 3), without
noise and with Poisson noise at 100 and 30 photons per unit intensity (plus Gaussian read noise 0.01). The
truth is the extra axial blur sqrt(axial^2 - lateral^2), what the estimator reports. Also the real confocal
bead stack of ../shared/data when present (no truth there; its beads' measured PSF gives ~9.4 px).

Printed: a table of true sd, estimate, 16-84% bootstrap range and error; the median |error|, the worst, and the
share within 15%, over all phantoms and over each noise level.

Run: python benchmarks/psf_estimate.py  (1288 s on 2 CPU cores, measured beside another job). Writes
benchmarks/results/psf_estimate.md and .json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask.adaptation.psf_estimate import MAX_LENGTH, estimate_axial_blur, profile_length
from ssai3d_dask.adaptation.sampling import volume_statistics
from ssai3d_dask.evaluation.simulate import PHANTOMS, ForwardModel, forward
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.io.volume import Volume, open_volume

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEADS = ROOT.parent / "shared" / "data" / "confocal_beads_mpicbg" / "Bead_Image1_crop.tif"
NOISE = {"none": {}, "100 photons": {"photons": 100, "read_noise": 0.01},
         "30 photons": {"photons": 30, "read_noise": 0.01}}


def shift_variant_truth(sd: float, lateral: float) -> float:
    """The extra axial sd a single Gaussian along z would need to match, on average over x, the simulator's
    shift-variant blur: its four zones (axial sd x0.7..x1.3, tilts -20..20 deg, linear blend weights 1:2:2:1 over
    x) each spread sd^2 cos^2 + lateral^2 sin^2 along z; the mean of that, less the lateral variance."""
    scales, angles = np.linspace(0.7, 1.3, 4), np.radians(np.linspace(-20, 20, 4))
    var_z = (sd * scales) ** 2 * np.cos(angles) ** 2 + lateral ** 2 * np.sin(angles) ** 2
    return float(np.sqrt(np.average(var_z, weights=[1, 2, 2, 1]) - lateral ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="tissue,tubes")
    ap.add_argument("--sigmas", default="3,6,10,14", help="axial PSF sd (px of the truth grid)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--shape", default="96,128,128", help="truth shape z,y,x (136,192,192 or more: 128-px profiles)")
    ap.add_argument("--length", type=int, default=MAX_LENGTH, help="longest profile (px), shortened to what each "
                    "stack allows; 64 = the estimator before profiles could grow")
    ap.add_argument("--shift-variant", action="store_true",
                    help="the simulator's shift-variant PSF: axial sd x0.7..x1.3 and tilt -20..20 deg across x; the "
                         "truth is then the blur's mean variance along z over x (see shift_variant_truth)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "psf_estimate.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, records = [], []
    shape = tuple(int(v) for v in args.shape.split(","))
    grid = itertools.product(args.kinds.split(","), (1, 3), [float(s) for s in args.sigmas.split(",")], NOISE)
    truths: dict[str, tuple[np.ndarray, dict]] = {}
    lengths: dict[int, int] = {}
    for kind, zf, sd, noise in grid:
        if kind not in truths:  # rendered once per kind; each case replays simulate()'s random stream from there
            rng = np.random.default_rng(args.seed)
            truths = {kind: (PHANTOMS[kind](shape, rng).astype(np.float32), rng.bit_generator.state)}
        truth, state = truths[kind]
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        model = ForwardModel(0.5, sd, z_factor=zf, shift_variant=args.shift_variant, **NOISE[noise])
        vol = Volume.from_array(forward(truth, model, rng), (float(f"{0.1 * zf:.12g}"), 0.1, 0.1))  # as simulate()
        est = estimate_axial_blur(vol, volume_statistics(vol), length=args.length)
        lengths[zf] = profile_length(vol.shape, isotropic_geometry(vol.shape, vol.voxel_size_um).z_factor, args.length)
        true = shift_variant_truth(sd, 0.5) if args.shift_variant else (sd ** 2 - 0.5 ** 2) ** 0.5
        err = (est.sigma_px - true) / true
        records.append({"kind": kind, "z_factor": zf, "axial_sd_px": sd, "noise": noise, "true_px": round(true, 3),
                        **est.to_dict(), "error": round(err, 4)})
        rows.append(f"| {kind} | {zf} | {noise} | {true:.2f} | {est.sigma_px:.2f} "
                    f"| {est.low_px:.2f}-{est.high_px:.2f} | {100 * err:+.1f}% |")
        print(rows[-1], flush=True)
    summary = []
    for label, sel in [("all", lambda r: True)] + [(n, lambda r, n=n: r["noise"] == n) for n in NOISE]:
        e = np.abs([r["error"] for r in records if sel(r)])
        summary.append(f"| {label} | {len(e)} | {100 * np.median(e):.1f}% | {100 * e.max():.1f}% "
                       f"| {100 * np.mean(e <= 0.15):.0f}% |")
    beads = None
    if BEADS.exists():
        real = open_volume(BEADS)
        beads = estimate_axial_blur(real, volume_statistics(real), length=args.length)
    lines = ["# Axial-blur estimate against known blurs", "",
             f"Machine: {platform.machine()}, {args.threads} CPU threads, torch {torch.__version__}. Command: "
             f"`python benchmarks/psf_estimate.py{' --shape ' + args.shape if args.shape != '96,128,128' else ''}"
             f"{' --kinds ' + args.kinds if args.kinds != 'tissue,tubes' else ''}"
             f"{' --sigmas ' + args.sigmas if args.sigmas != '3,6,10,14' else ''}"
             f"{' --shift-variant' if args.shift_variant else ''}"
             f"{f' --length {args.length}' if args.length != MAX_LENGTH else ''}`. "
             f"Phantoms {' x '.join(map(str, shape))} (seed {args.seed}), lateral sd 0.5 px; "
             f"{lengths[1]}-px profiles at z step 1, {lengths[3]} at 3; "
             + ("shift-variant PSF (axial sd x0.7..x1.3, tilt -20..20 deg across x); true = sqrt(the mean over x "
              "of the PSF's variance along z - lateral^2)" if args.shift_variant else
              "true = sqrt(axial^2 - lateral^2)") + " px on the lateral grid.", "",
             "| phantom | z step (px) | noise | true sd | estimate | 16-84% | error |", "|---|---|---|---|---|---|---|",
             *rows, "", "| phantoms | n | median abs. error | worst | within 15% |", "|---|---|---|---|---|", *summary, "",
             (f"Real confocal beads ({BEADS.name}; their measured PSF gives ~9.4 px): {beads}." if beads else
              "Real confocal beads: not found."), "", f"Total: {time.perf_counter() - t0:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"phantoms": records,
                                                          "beads": beads.to_dict() if beads else None}, indent=1))
    print("\n".join(lines[-6:]))


if __name__ == "__main__":
    main()
