"""OT-CycleGAN against its training budget, in the paper's own setting (tubes, axial blur sd 4 px, z x4).

fidelity.py trains OT-CycleGAN for 300 steps per stack (~4 min on 2 CPU cores), where it equals linear
interpolation. This script trains the package's default budget (``ssai3d train-cyclegan``: 1500 steps,
32^3 sub-volumes, batch 2, lr 2e-4, cycle weight 10) on the same x4 stack as fidelity.py's experiment 6
and reports what the longer budget buys: PSNR, MS-SSIM, SSIM of 15-slice axial MIPs, axial FWHM mismatch
of tubes, and the training's validation curve (cycle loss, the discriminator's accuracy on G's axial
slices against lateral slices, and how far G's weights moved).

Run: python benchmarks/cyclegan_budget.py [--steps 1500]  (about 20 minutes on 2 CPU cores)
Writes benchmarks/results/cyclegan_budget.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fidelity import SIZES, Runner, box, mip_ssim, true_psf_um
from ssai3d_dask.adaptation.cyclegan import train_cyclegan
from ssai3d_dask.evaluation.metrics import ms_ssim, psnr, tube_fwhm_mismatch
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.settings import CycleGANSettings

RESULTS = Path(__file__).parent / "results"


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, str]:
    p = np.clip(pred, 0, 1)
    fw = tube_fwhm_mismatch(p, truth) * 100  # 100 nm voxels
    return {"PSNR (dB)": f"{psnr(p, truth, 1.0):.2f}", "MS-SSIM": f"{ms_ssim(p, truth, 1.0):.4f}",
            "SSIM of 15-slice axial MIPs, median [IQR] (range)": box(mip_ssim(p, truth), "{:.3f}"),
            "axial FWHM mismatch of tubes (nm), median [IQR]": box(fw, "{:.0f}").split(" (")[0] if len(fw) else "-"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=CycleGANSettings().iterations)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "cyclegan_budget.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SIZES["small"]
    fm = ForwardModel(0.5, 4.0, z_factor=4)
    sim = simulate("tubes", cfg["shape"], seed=16, model=fm)
    work = Path(tempfile.mkdtemp(prefix="ssai3d-gan-"))
    r = Runner(cfg, work)
    vol = r.volume(sim, "under-x4")
    t0 = time.perf_counter()
    try:
        settings = CycleGANSettings(iterations=args.steps, volume_px=cfg["gan_volume"])
        t = time.perf_counter()
        train_cyclegan(vol, work / "gan.model", settings, progress=True, overwrite=True)
        train_s = time.perf_counter() - t
        history = json.loads((work / "gan.model" / "manifest.json").read_text())["history"]
        preds = {"linear interp.": r.apply(vol, "interp", None, true_psf_um(fm), "under-x4"),
                 f"OT-CycleGAN, {args.steps} steps": r.apply(vol, "cyclegan", work / "gan.model", None, "under-x4")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = {name: scores(p, sim.truth) for name, p in preds.items()}
    metrics = list(next(iter(rows.values())))
    lines = ["# OT-CycleGAN against its training budget", "",
             f"Machine: {platform.machine()}, {args.threads} CPU threads, torch {torch.__version__}. Command: "
             f"`python benchmarks/cyclegan_budget.py --steps {args.steps}`. Stack: fidelity.py's experiment 6, x4 "
             f"(tubes {cfg['shape']}, axial blur sd 4 px, z every 4 voxels). Settings: {json.dumps(settings.to_dict())}.",
             f"Training: {train_s:.0f} s; total {time.perf_counter() - t0:.0f} s. archive/fidelity_blind.md has the 300-step "
             "column (PSNR 21.03, equal to interpolation).", "",
             "| metric | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(rows[n][m] for n in rows) + " |" for m in metrics]
    lines += ["", "Validation during training (cycle L1 on held-out sub-volumes, D_Y accuracy on G's axial slices vs "
              "lateral slices, relative change of G's weights):", "", "```",
              *[json.dumps(v) for v in history["validation"]], "```"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
