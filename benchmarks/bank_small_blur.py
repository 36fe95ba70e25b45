"""Stacks blurred less along z than the PSF bank: the paper bank (sd 3-7 px, what ``--psf-bank auto`` keeps, since
it never narrows) against a bank centred on the stack's own estimate, and interpolation.

``--psf-bank auto`` only widens the bank (:func:`ssai3d_dask.adaptation.psf_estimate.auto_bank_widths`), so a
nearly isotropic stack (axial blur 1.5-2.5 px beyond the lateral one) trains on blurs 1.5-5x wider than its own.
This checks that choice where it is most in doubt: tubes phantoms (48 x 96 x 96 truth) with a small axial blur,
noise-free and noisy, each adapted twice with the package's defaults but for the bank (the benchmark's 128
patches of 64 px, batch 8, patience), restored in memory (the whole-volume reference of the block pipeline).

Run: python benchmarks/bank_small_blur.py [--cases t15z1,t2z2n,t25z2]   (about 20 min on 2 CPU cores)
Writes benchmarks/results/bank_small_blur.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.adaptation.psf_estimate import AUTO_SPREAD, BANK_LEAN, estimate_axial_blur
from ssai3d_dask.adaptation.sampling import volume_statistics
from ssai3d_dask.evaluation.metrics import psnr, ssim
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.models.folder import AdaptedModel
from ssai3d_dask.restoration.kernels import restore_in_memory
from ssai3d_dask.settings import AdaptSettings, FinetuneSettings

RESULTS = Path(__file__).parent / "results"
PAPER = (3.0, 4.0, 5.0, 6.0, 7.0)
CASES = {"t15z1": ("tubes", ForwardModel(0.5, 1.5, z_factor=1), "axial sd 1.5 px, z x1, noise-free"),
         "t2z2n": ("tubes", ForwardModel(0.5, 2.0, z_factor=2, photons=100, read_noise=0.01),
                   "axial sd 2 px, z x2, 100 photons + 0.01 read noise"),
         "t25z2": ("tubes", ForwardModel(0.5, 2.5, z_factor=2), "axial sd 2.5 px, z x2, noise-free")}


def run_case(name: str, work: Path) -> dict:
    kind, fm, _ = CASES[name]
    sim = simulate(kind, (48, 96, 96), seed=21, model=fm)
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(8, 48, 48), source=name)
    est = estimate_axial_blur(vol, volume_statistics(vol, 0)).sigma_px
    res: dict = {"true_extra_sd": float(np.sqrt(fm.sigma_axial_px ** 2 - fm.sigma_lateral_px ** 2)), "estimate": est}
    centred = tuple(round(max(0.5, est * BANK_LEAN * k), 3) for k in AUTO_SPREAD)
    for tag, sig in (("paper", PAPER), ("centred", centred)):
        out = work / f"{name}-{tag}.model"
        t = time.perf_counter()
        adapt(vol, out, AdaptSettings(n_patches=128, patch_px=64, psf_bank="paper", sigmas_px=sig,
                                      finetune=FinetuneSettings(batch_size=8)), progress=False, overwrite=True)
        m = AdaptedModel.load(out)
        p = np.clip(restore_in_memory(sim.raw, m.z_factor, m.model, m.denoiser, m.norm, 32, precision="bf16"), 0, 1)
        res[tag] = {"bank": list(sig), "psnr": psnr(p, sim.truth, 1.0), "ssim": ssim(p, sim.truth, 1.0),
                    "adapt_s": round(time.perf_counter() - t)}
        if "interp" not in res:
            p0 = np.clip(restore_in_memory(sim.raw, m.z_factor, None, m.denoiser, m.norm, 32), 0, 1)
            res["interp"] = {"psnr": psnr(p0, sim.truth, 1.0), "ssim": ssim(p0, sim.truth, 1.0)}
    print(name, json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "bank_small_blur.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: run_case(n, Path(tmp)) for n in args.cases.split(",")}
    lines = ["# Small axial blur: the paper bank against a bank centred on the estimate", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}. "
             f"Command: `python benchmarks/bank_small_blur.py --cases {args.cases}` "
             f"({time.perf_counter() - t0:.0f} s).", "",
             "Tubes, truth 48 x 96 x 96 (0.1 um voxels), lateral PSF sd 0.5 px; each stack adapted twice with the "
             "defaults but for the bank (128 patches of 64 px, batch 8, patience 250) and restored whole. "
             "Centred bank: the estimate x 1.25 (BANK_LEAN) x (0.6, 0.8, 1.0, 1.2, 1.4).", "",
             "| stack | true extra sd (px) | estimate (px) | centred bank (px) | interp. PSNR / SSIM | "
             "paper bank 3-7 px | centred bank |", "|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        fmt = lambda d: f"{d['psnr']:.2f} / {d['ssim']:.3f}"  # noqa: E731
        lines.append(f"| {CASES[n][2]} | {r['true_extra_sd']:.2f} | {r['estimate']:.2f} | "
                     f"{r['centred']['bank'][0]:.2f}-{r['centred']['bank'][-1]:.2f} | {fmt(r['interp'])} | "
                     f"{fmt(r['paper'])} | {fmt(r['centred'])} |")
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
