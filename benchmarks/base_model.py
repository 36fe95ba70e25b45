"""Base model figures: parameters, GMAC, CPU forward time, held-out deblurring gain, tile invariance.

Run: python benchmarks/base_model.py  (writes benchmarks/results/base_model.md and base_model.png)
     python benchmarks/base_model.py --model CANDIDATE.pt --no-write  (a candidate base, before shipping it)
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask.models.checkpoint import load_model
from ssai3d_dask.models.nafnet import build, count_macs, count_parameters, gray_forward

from ssai3d_dask.models.reach import measure_reach, tiled_forward
from ssai3d_dask.adaptation.losses import psnr_loss
from ssai3d_dask.adaptation.pretrain_data import image_pool, random_crops
from ssai3d_dask.adaptation.psf import axial_forward, conv2d_per_sample
from ssai3d_dask.ops.kernels import gaussian_kernel2d
from ssai3d_dask.restoration.kernels import BASE_REACH_PX

RESULTS = Path(__file__).parent / "results"
#: Tile halos (px) of the invariance table; BASE_REACH_PX is the one the pipeline's default halo uses.
HALOS = tuple(sorted({32, 64, 80, 96, 128, BASE_REACH_PX}))


def forward_seconds(model, size=256, repeats=3) -> float:
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def degradations(sharp: torch.Tensor) -> dict[str, torch.Tensor]:
    n = len(sharp)
    out = {}
    for sd in (2, 4, 6):
        k = torch.from_numpy(np.stack([gaussian_kernel2d(sd, 0.5, 0.0)] * n))
        out[f"axial Gaussian sd {sd}"] = conv2d_per_sample(sharp, k)
    k = torch.from_numpy(np.stack([gaussian_kernel2d(2, 0.5, 0.0)] * n))
    out["blur sd 2 + subsample x3"] = axial_forward(conv2d_per_sample(sharp, k), 3.0, dim=-2)
    return out


def wide_degradations(sharp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Axial blur of coarse-z stacks (z step >= 5x the pixel: sd ~12 px on the isotropic grid, as the
    confocal bead stack in ../shared/data measures); reported apart from the first set, which the
    earlier bases were compared on."""
    n = len(sharp)
    out = {}
    for sd in (10, 12):
        k = torch.from_numpy(np.stack([gaussian_kernel2d(sd, 0.5, 0.0)] * n))
        out[f"axial Gaussian sd {sd}"] = conv2d_per_sample(sharp, k)
    out["blur sd 12 + subsample x5"] = axial_forward(out["axial Gaussian sd 12"], 5.0, dim=-2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="base", help="base model checkpoint ('base' = the shipped one)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results/ as it is")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = [f"# Base model ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})", ""]
    lines += ["| preset | parameters | GMAC per 256x256 | CPU forward 256x256 (s) |", "|---|---|---|---|"]
    for name in ("small", "gopro-width32", "paper"):
        m = build(name).eval()
        lines.append(f"| {name} | {count_parameters(m):,} | {count_macs(m) / 1e9:.2f} | {forward_seconds(m):.3f} |")
    model, manifest = load_model(args.model)
    rng = np.random.default_rng(123)
    sharp = random_crops(image_pool("heldout", 0, n_procedural=8), 32, 128, rng)
    lines += ["", f"{'Shipped model' if args.model == 'base' else args.model}: `{manifest.get('command')}`", "",
              "Held-out images (skimage camera, coins, cell + held-out procedural), 32 crops of 128 px:", "",
              "| degradation | input PSNR (dB) | output PSNR (dB) | gain (dB) |", "|---|---|---|---|"]
    panels = []
    for title, degs in (("average", degradations(sharp)), ("wide-blur average", wide_degradations(sharp))):
        gains = []
        for name, deg in degs.items():
            with torch.no_grad():
                out = gray_forward(model, deg)
            pin = -psnr_loss(deg.clamp(0, 1), sharp).item()
            pout = -psnr_loss(out.clamp(0, 1), sharp).item()
            gains.append(pout - pin)
            lines.append(f"| {name} | {pin:.2f} | {pout:.2f} | {pout - pin:+.2f} |")
            if title == "average":
                panels.append((name, deg[:3, 0].numpy(), out[:3, 0].numpy()))
        lines.append(f"| **{title}** | | | **{np.mean(gains):+.2f}** |")
    img = torch.nn.functional.interpolate(sharp[:1], size=(384, 320), mode="bilinear").expand(-1, 3, -1, -1)
    lines += ["", "SCA pooling window: deblurring quality (16 held-out crops of 192 px, axial sd 4) and tile "
                  "invariance (384x320 image, 128 px tiles, max |whole - tiled|, image range 0..1):", "",
              "| window (px) | output PSNR (dB) | " + " | ".join(f"halo {h}" for h in HALOS) + " |",
              "|---|---|" + "---|" * len(HALOS)]
    crops = random_crops(image_pool("heldout", 0, n_procedural=8), 16, 192, np.random.default_rng(123))
    k = torch.from_numpy(np.stack([gaussian_kernel2d(4, 0.5, 0.0)] * 16))
    blurred = conv2d_per_sample(crops, k)
    for win in (None, 32, model.local_window(), 64, 96, int(1.5 * model.config.train_size)):
        model.set_pool_window(win)
        with torch.no_grad():
            p = -psnr_loss(gray_forward(model, blurred).clamp(0, 1), crops).item()
            whole = model(img)
        diffs = (["-"] * len(HALOS) if win is None else
                 [f"{(whole - tiled_forward(model, img, 128, h)).abs().max().item():.1e}" for h in HALOS])
        label = "global" if win is None else f"{win}" + (" (default)" if win == model.local_window() else "")
        lines.append(f"| {label} | {p:.2f} | " + " | ".join(diffs) + " |")
    model.set_pool_window(model.local_window())
    r = measure_reach(model)
    recorded = (getattr(model, "reach", None) or {}).get("reach_px")
    lines += ["", f"Measured reach (ssai3d_dask.models.reach, probe images, tolerance {r['tolerance']:.0e}) at the "
                  f"default window {r['pool_window_px']} px: **{r['reach_px']} px** (tile error {r['tile_error']:.1e}); "
                  f"recorded in the weights' manifest: {recorded if recorded is not None else 'none'} "
                  f"(BASE_REACH_PX fallback {BASE_REACH_PX})."]
    print("\n".join(lines))
    if not args.no_write:
        (RESULTS / "base_model.md").write_text("\n".join(lines) + "\n")
        _png(panels, sharp[:3, 0].numpy())


def _png(panels, sharp) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2 * len(panels) + 1, figsize=(2 * (2 * len(panels) + 1), 6))
    for r in range(3):
        for j, (name, deg, out) in enumerate(panels):
            axes[r, 2 * j].imshow(deg[r], cmap="gray", vmin=0, vmax=1)
            axes[r, 2 * j + 1].imshow(out[r], cmap="gray", vmin=0, vmax=1)
            if r == 0:
                axes[r, 2 * j].set_title(f"{name}\ninput", fontsize=7)
                axes[r, 2 * j + 1].set_title("output", fontsize=7)
        axes[r, -1].imshow(sharp[r], cmap="gray", vmin=0, vmax=1)
        if r == 0:
            axes[r, -1].set_title("sharp", fontsize=7)
    for a in axes.ravel():
        a.set_axis_off()
    fig.tight_layout()
    fig.savefig(RESULTS / "base_model.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
