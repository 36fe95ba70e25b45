"""Adaptation ablation: base model vs full fine-tuning vs random 10% vs surgeon 10% (issue 4 evidence).

Phantoms (truth 48 x 128 x 128 at 0.1 um; raw z every 4 voxels, PSF sd 0.5 / 3 px):
strands (low lateral-axial similarity) and tubes with Poisson + Gaussian noise.
Scores: PSNR over the restored volume and mean SSIM over XZ slices, against the truth,
intensity range 1. Also bytes read by the lazy patch sampler.

Run: python benchmarks/adaptation.py [--iterations 200]  (writes benchmarks/results/adaptation.md)
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.settings import AdaptSettings
from ssai3d_dask.models.checkpoint import load_model
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.settings import FinetuneSettings
from ssai3d_dask.evaluation.metrics import psnr
from ssai3d_dask.restoration.kernels import restore_in_memory
from ssai3d_dask.adaptation.sampling import volume_statistics
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume

RESULTS = Path(__file__).parent / "results"
CASES = {
    "strands": ("strands", ForwardModel(0.5, 3.0, z_factor=4)),
    "tubes + noise": ("tubes", ForwardModel(0.5, 3.0, z_factor=4, photons=100, read_noise=0.01)),
}


def axial_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    ssim = np.mean([structural_similarity(truth[:, y], pred[:, y], data_range=1.0) for y in range(truth.shape[1])])
    return psnr(pred, truth, 1.0), float(ssim)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--halo", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lines = [f"# Adaptation ablation ({platform.machine()}, 2 threads, small preset, {args.iterations} fine-tuning "
             f"steps, 128 patches of 64 px)", ""]
    for case, (kind, fm) in CASES.items():
        sim = simulate(kind, (48, 128, 128), seed=7, model=fm)
        vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(4, 64, 64), source=f"phantom:{kind}")
        rows = []
        norm = volume_statistics(vol)
        interp = restore_in_memory(sim.raw, 4.0, None, Denoiser(), norm, 16)
        rows.append(("linear z interpolation", *axial_scores(interp, sim.truth), 0.0, "-"))
        base, _ = load_model("base")
        base.set_pool_window(base.local_window())
        out = restore_in_memory(sim.raw, 4.0, base, Denoiser(), norm, args.halo)
        rows.append(("base model, no fine-tuning", *axial_scores(out, sim.truth), 0.0, "-"))
        bytes_read = None
        for label, selection, frac in (("full fine-tuning", "all", 1.0), ("random 10% of layers", "random", 0.1),
                                       ("snip 10% of layers", "snip", 0.1), ("surgeon 10% of layers", "surgeon", 0.1)):
            s = AdaptSettings(n_patches=128, patch_px=64, selection=selection, layers_fraction=frac,
                              finetune=FinetuneSettings(iterations=args.iterations))
            t = time.perf_counter()
            a = adapt(vol, None, s, progress=False)
            secs = time.perf_counter() - t
            out = restore_in_memory(sim.raw, 4.0, a.model, a.denoiser, a.norm, args.halo)
            rows.append((label, *axial_scores(out, sim.truth), secs, a.manifest.history["trainable_parameters"]))
            bytes_read = a.manifest.extra["sampling"]
        lines += [f"## {case}", "", "| method | PSNR (dB) | XZ SSIM | adapt wall time (s) | trainable parameters |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r[0]} | {r[1]:.2f} | {r[2]:.4f} | {r[3]:.1f} | {r[4]} |" for r in rows]
        lines += ["", f"Lazy sampling read {bytes_read['bytes_read'] / 2**20:.2f} MiB of a "
                      f"{bytes_read['volume_bytes'] / 2**20:.2f} MiB volume ({bytes_read['candidates']} candidates "
                      f"for {bytes_read['patches']} patches).", ""]
        print("\n".join(lines))
    (RESULTS / "adaptation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
