"""How far past the stack's axial blur the one training PSF of ``--psf-bank auto`` should sit (``--psf-lean``).

A network adapted on pairs blurred by one Gaussian of sd ``s`` along z learns to undo that blur. On a stack whose
real axial blur is ``t``, ``s < t`` leaves a residual blur of sd ``sqrt(t^2 - s^2)``, ``s > t`` over-sharpens. The
estimate (``ssai3d info --psf``) is within ~15 % but not exact, so which error costs more decides where the width
should sit. This adapts SSAI-3D with its defaults, given one width ``m x t`` along z (``t`` the phantom's true
extra axial sd beyond the lateral one), on phantoms of ``benchmarks/fidelity.py`` (same shapes, seeds,
128 patches of 64 px, batch 8, adaptation to the validation plateau), restores through the block pipeline as
fidelity.py does, and prints PSNR, SSIM (3D) and the mean XZ SSIM against the truth for each multiple ``m``
(``eM``: M x the blind estimate, ``ssai3d info --psf``, as the default ``--psf-lean`` applies it; the held-out cases
are phantoms, blurs and seeds fidelity.py does not have).

Run: python benchmarks/psf_lean.py [--cases x2:0.8,0.9,1.0,1.1,1.2 tissue:e1,e1.15]   (~4-5 min per row, 2 CPU
cores). Each row is kept in benchmarks/results/psf_lean.json as it finishes (a stopped run resumes).
Writes benchmarks/results/psf_lean.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fidelity import SIZES, Runner, xz_slice_scores  # noqa: E402  (the phantoms' pipeline settings and metrics)

from ssai3d_dask.adaptation.adapt import adapt  # noqa: E402
from ssai3d_dask.evaluation.metrics import psnr, ssim  # noqa: E402
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate  # noqa: E402
from ssai3d_dask.settings import AdaptSettings  # noqa: E402

RESULTS = HERE / "results"
#: name: (phantom, forward model, seed of fidelity.py's experiment, description)
CASES = {
    "x2": ("tubes", ForwardModel(0.5, 4.0, z_factor=2), 16, "tubes, blur sd 4 px + z x2 (fidelity.py 6)"),
    "x4": ("tubes", ForwardModel(0.5, 4.0, z_factor=4), 16, "tubes, blur sd 4 px + z x4 (fidelity.py 6)"),
    "strands": ("strands", ForwardModel(0.5, 4.0, z_factor=4), 12, "strands, sd 4 px, z x4 (fidelity.py 2)"),
    "cyl": ("cylinders", ForwardModel(0.5, 4.0, z_factor=4), 14, "cylinders, sd 4 px, z x4 (fidelity.py 4)"),
    "spheres": ("spheres", ForwardModel(0.5, 4.0, z_factor=4), 14, "spheres, sd 4 px, z x4 (fidelity.py 4)"),
    # held out: phantoms, blurs and seeds that fidelity.py does not have
    "tissue": ("tissue", ForwardModel(0.5, 6.0, z_factor=3, photons=300, read_noise=0.01), 31,
               "held out: tissue (neurites + nuclei), sd 6 px, z x3, 300 photons + 0.01 read noise"),
    "tubes25": ("tubes", ForwardModel(0.5, 2.5, z_factor=2), 32, "held out: tubes, sd 2.5 px, z x2"),
}


def run_row(runner: Runner, case: str, mult: str) -> dict:
    """One adaptation and restore; ``mult`` is ``M`` (M x the true width) or ``eM`` (M x the blind estimate)."""
    kind, fm, seed, _ = CASES[case]
    cfg = runner.cfg
    sim = simulate(kind, cfg["shape"], seed=seed, model=fm)
    vol = runner.volume(sim, case)
    true = float(np.sqrt(fm.sigma_axial_px ** 2 - fm.sigma_lateral_px ** 2))
    est = runner.estimated_sigma_px(vol, case)
    sd = round((est if mult.startswith("e") else true) * float(mult.lstrip("e")), 3)
    out = runner.work / f"{case}-{mult}.model"
    t = time.perf_counter()
    # one width, given as it is ('paper' with one width and one angle: the lean under test replaces --psf-lean's)
    adapt(vol, out, AdaptSettings(n_patches=cfg["patches"], patch_px=cfg["patch_px"], psf_bank="paper",
                                  sigmas_px=(sd,), angles_deg=(0.0,), finetune=runner.finetune_settings(),
                                  seed=cfg["train_seed"]), progress=False, overwrite=True)
    train_s = time.perf_counter() - t
    p = np.clip(runner.apply(vol, "ssai3d", out, None, f"{case}-{mult}"), 0, 1)
    h = json.loads((out / "manifest.json").read_text())["history"]
    return {"true_sd": round(true, 3), "estimate": round(est, 3), "sd": sd,
            "psnr": psnr(p, sim.truth, 1.0), "ssim": ssim(p, sim.truth, 1.0),
            "xz_ssim": float(xz_slice_scores(p, sim.truth)[1].mean()), "steps": h["steps"],
            "stopped_by": h["stopped_by"], "train_s": round(train_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["x2:0.8,0.9,1.0,1.1,1.2", "strands:1.0,1.15,1.3", "cyl:1.15",
                                                   "tissue:e1,e1.15", "tubes25:e1,e1.15"],
                    help="CASE:M1,M2,... with M a multiple of the true width or eM of the blind estimate "
                         "(cases: %s)" % ", ".join(CASES))
    ap.add_argument("--out", type=Path, default=RESULTS / "psf_lean.md")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plan = []
    for c in args.cases:
        case, _, mults = c.partition(":")
        if case not in CASES or not mults:
            ap.error(f"--cases {c!r}: give CASE:M1,M2 with CASE one of {', '.join(CASES)}")
        plan += [(case, m if m.startswith("e") else f"{float(m):g}") for m in mults.split(",")]
    store = args.out.with_suffix(".json")
    rows = json.loads(store.read_text()) if store.exists() else {}
    cfg = dict(SIZES["small"], train_seed=0, ft_steps="default budget")
    with tempfile.TemporaryDirectory(prefix="psf-lean-") as work:
        runner = Runner(cfg, Path(work))
        for case, m in plan:
            key = f"{case}:{m}"
            if key in rows:
                continue
            rows[key] = run_row(runner, case, m)
            print(key, rows[key], flush=True)
            store.write_text(json.dumps(rows, indent=1))
    lines = ["# The one training PSF's width against the stack's true axial blur (`--psf-lean`)", "",
             f"Machine: {platform.machine()}, {args.threads} CPU threads, torch {torch.__version__}. Command: "
             f"`python benchmarks/psf_lean.py --cases {' '.join(args.cases)}`. SSAI-3D defaults (every layer, "
             "adaptation to the validation plateau), one PSF of sd m x the true extra axial sd along z; "
             "fidelity.py's phantoms (48 x 96 x 96), patches (128 of 64 px), batch 8, seed 0, block restore.", ""]
    for case in dict.fromkeys(k.split(":")[0] for k in rows):
        true = next(r["true_sd"] for k, r in rows.items() if k.split(":")[0] == case)
        lines += [f"## {CASES[case][3]} (true extra axial sd {true:.2f} px)", "",
                  "| m (eM: M x the estimate) | width (px) | PSNR (dB) | SSIM | mean XZ SSIM | steps | train s |",
                  "|---|---|---|---|---|---|---|"]
        for key in sorted((k for k in rows if k.split(":")[0] == case),
                          key=lambda k: (k.split(":")[1][0] == "e", float(k.split(":")[1].lstrip("e")))):
            r = rows[key]
            xz = "-" if r["xz_ssim"] is None else f"{r['xz_ssim']:.4f}"  # the first rows (x2) did not record it
            lines.append(f"| {key.split(':')[1]} | {r['sd']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {xz} | "
                         f"{r['steps']} ({r['stopped_by']}) | {r['train_s']} |")
        lines.append("")
    # a reading written by hand under the tables survives a rerun (it is the file's only prose that is not generated)
    if args.out.exists() and "## Reading (by hand)" in (old := args.out.read_text()):
        lines += [old[old.index("## Reading (by hand)"):].rstrip("\n")]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
