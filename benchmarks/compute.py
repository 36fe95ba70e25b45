"""Compute: fp32 vs ``--precision auto`` (bf16 autocast where the device does bf16 fast), channels-last,
achieved FLOP/s against the machine's measured peak, batch size, end-to-end restore and adaptation.

Run: python benchmarks/compute.py [--device cpu|cuda] [--out FILE] [--quick] [--shape Z Y X] [--steps N]
(writes benchmarks/results/compute.md on CPU, compute_cuda.md on CUDA, unless --out is given)

Sections, all measured in this one run on one machine:

1. Peak: a large fp32 and bf16 matrix product (the most FLOP/s the device gives a framework).
2. Network forward, per preset (``small``, ``gopro-width32``) and layout/precision, on a batch of extended
   restore slices (256 z rows x 384 px: a 128 x 256 core plus the 64 px halos): seconds, achieved
   FLOP/s (2 x conv multiply-accumulates) and the fraction of the peak of that precision.
3. Slices per forward pass: throughput of the ``small`` forward against the batch size.
4. A fine-tuning step (batch 8, 96 px, AdamW, all layers) per preset, fp32 vs auto.
5. End to end: ``restore`` (the code ``ssai3d restore`` runs) on a tubes phantom with a model adapted
   from each preset, ``--precision fp32`` vs ``auto``: throughput and PSNR against the truth.
6. ``adapt`` at equal steps, fp32 vs auto (and bf16 forced, where auto is fp32): wall time and validation
   PSNR.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.adaptation.losses import psnr_loss
from ssai3d_dask.evaluation.metrics import psnr
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume, open_volume
from ssai3d_dask.models.nafnet import build, count_macs, gray_forward
from ssai3d_dask.models.precision import cpu_bf16_fast, resolve_precision
from ssai3d_dask.restoration.kernels import apply_network
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import AdaptSettings, FinetuneSettings, RestoreSettings

RESULTS = Path(__file__).parent / "results"
PRESETS = ("small", "gopro-width32")
SLICE = (256, 384)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, min_s: float, min_n: int = 2) -> float:
    """Seconds per call: one warm-up, then repeat until ``min_s`` and ``min_n`` calls."""
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_n or time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n


def peak_flops(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    n = 8192 if device.type == "cuda" else 2048
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_bf16_fast():
        n = 512  # emulated bf16 runs at ~1 GFLOP/s here: a 2048^3 product would take minutes
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    s = timed(lambda: a @ b, device, 0.5 if quick else 2.0, 3)
    return 2 * n**3 / s


def forward_rows(device, batch, peaks, quick, include_forced_bf16):
    rows = []
    for preset in PRESETS:
        torch.manual_seed(0)
        model = build(preset).eval().to(device)
        model.set_pool_window(48)
        macs = count_macs(model.cpu(), *SLICE)
        model.to(device)
        x = torch.rand(batch, 1, *SLICE, device=device)
        variants = [("fp32, contiguous", False, "fp32"), ("fp32, channels-last", True, "fp32")]
        auto = resolve_precision("auto", device)
        if auto == "bf16" or (include_forced_bf16 and preset == "small"):
            variants.append(("bf16 autocast, channels-last" + ("" if auto == "bf16" else " (forced)"), True, "bf16"))
        base = None
        for label, cl, prec in variants:
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            xx = x.contiguous(memory_format=torch.channels_last) if cl else x

            def fwd():
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=prec == "bf16"):
                    apply_network(model, xx)

            s = timed(fwd, device, 1.0 if quick else 3.0)
            base = base or s
            flops = 2 * macs * batch / s
            rows.append(f"| {preset} | {label} | {s * 1e3:.1f} | {batch * SLICE[0] * SLICE[1] / s / 1e6:.2f} | "
                        f"{flops / 1e12:.3f} | {100 * flops / peaks[prec]:.1f}% | {base / s:.2f}x |")
    return rows


def batch_rows(device, quick):
    torch.manual_seed(0)
    model = build("small").eval().to(device, memory_format=torch.channels_last)
    model.set_pool_window(48)
    prec = resolve_precision("auto", device)
    rows = []
    for b in ((1, 2, 4, 8, 16) if device.type == "cpu" else (4, 8, 16, 32, 64, 128)):
        x = torch.rand(b, 1, *SLICE, device=device)

        def fwd():
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=prec == "bf16"):
                apply_network(model, x)

        s = timed(fwd, device, 1.0 if quick else 3.0)
        rows.append(f"| {b} | {s * 1e3:.1f} | {b / s:.2f} |")
    return rows


def train_rows(device, quick, include_forced_bf16):
    rows = []
    for preset in PRESETS:
        torch.manual_seed(0)
        model = build(preset).to(device, memory_format=torch.channels_last)
        model.set_pool_window(48)
        macs = count_macs(model.cpu(), 96, 96)
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        x = torch.rand(8, 1, 96, 96, device=device)
        auto = resolve_precision("auto", device)
        precs = ["fp32"] + (["bf16"] if auto == "bf16" or (include_forced_bf16 and preset == "small") else [])
        base = None
        for prec in precs:
            def step():
                with torch.autocast(device.type, torch.bfloat16, enabled=prec == "bf16"):
                    loss = psnr_loss(gray_forward(model, x), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            s = timed(step, device, 1.0 if quick else 3.0)
            base = base or s
            flops = 3 * 2 * macs * 8 / s  # forward + backward ~ 3 forwards
            rows.append(f"| {preset} | {prec}{'' if prec == 'fp32' or auto == 'bf16' else ' (forced)'} | "
                        f"{s * 1e3:.1f} | {flops / 1e12:.3f} | {base / s:.2f}x |")
    return rows


def end_to_end_rows(device, tmp: Path, quick, shape, steps):
    sim = simulate("tubes", shape, seed=3, model=ForwardModel(0.5, 3.0, z_factor=4))
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(8, 128, 128), source="phantom:tubes")
    rows, adapt_rows = [], []
    auto = resolve_precision("auto", device)
    for preset in PRESETS:
        models = {}
        precs = ["fp32", "auto"] + (["bf16"] if auto == "fp32" and preset == "small" and not quick else [])
        for prec in precs:
            # gopro-width32 has no pretrained weights yet: adapted from its initialisation, all layers trained
            s = AdaptSettings(base="base" if preset == "small" else preset, n_patches=64, patch_px=96,
                              selection="surgeon" if preset == "small" else "all", seed=0,
                              finetune=FinetuneSettings(iterations=steps, device=device.type, precision=prec))
            t = time.perf_counter()
            a = adapt(vol, tmp / f"{preset}-{prec}", s, progress=False)
            h = a.manifest.history
            adapt_rows.append(f"| {preset} | {prec} ({h['precision']}) | {steps} | {time.perf_counter() - t:.1f} | "
                              f"{h['seconds']:.1f} | {h['val_psnr_before']:.2f} | {h['val_psnr_after']:.2f} |")
            models[prec] = tmp / f"{preset}-{prec}"
        variants = [("fp32", "off", "fp32"), ("auto", "off", "auto")]
        if device.type == "cuda":  # compiled: the first run includes the compilation, the second reuses it
            variants += [("auto", "on", "auto, compiled (first run)"), ("auto", "on", "auto, compiled (warm)")]
        outs = {}
        for i, (prec, comp, label) in enumerate(variants):
            out = tmp / f"{preset}-{i}.ome.zarr"
            rs = RestoreSettings(device=device.type, precision=prec, compile=comp, chunks=(32, 64, 64),
                                 region=(64, 128, 128))
            t = time.perf_counter()
            restore(vol, models["fp32"], out, rs, progress=False)
            outs[label] = (open_volume(str(out)).data.compute(), time.perf_counter() - t)
        f32, t32 = outs["fp32"]
        p32 = psnr(f32, sim.truth, 1.0)
        for label, (arr, secs) in outs.items():
            p = psnr(arr, sim.truth, 1.0)
            rows.append(f"| {preset} | {label} | {arr.size / 1e6:.2f} | {secs:.1f} | {t32 / secs:.2f}x | {p:.3f} | "
                        f"{p - p32:+.3f} | {float(np.abs(arr - f32).max()):.2e} |")
    return rows, adapt_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true", help="shorter timings, no forced bf16 adaptation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), help="phantom truth shape (z y x)")
    ap.add_argument("--steps", type=int, default=100, help="fine-tuning steps of each adaptation")
    ap.add_argument("--only-end-to-end", action="store_true", help="skip the micro-benchmarks")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
        except (OSError, StopIteration):
            pass
    auto = resolve_precision("auto", device)
    forced = device.type == "cpu" and auto == "fp32"
    batch = 4 if device.type == "cpu" else 32
    lines = [f"# Compute on {name} ({device.type}, {torch.get_num_threads()} threads, torch {torch.__version__})", "",
             f"`--precision auto` resolves to **{auto}** here"
             + (f" (CPU bf16 instructions: {'yes' if cpu_bf16_fast() else 'no: no AMX-BF16 or AVX512-BF16'})"
                if device.type == "cpu" else "") + ".", ""]
    if not args.only_end_to_end:
        peaks = {"fp32": peak_flops(device, torch.float32, args.quick),
                 "bf16": peak_flops(device, torch.bfloat16, args.quick)}
        lines += ["## Peak (matrix product)", "", "| precision | TFLOP/s |", "|---|---|",
                  *(f"| {k} | {v / 1e12:.4f} |" for k, v in peaks.items()), "",
                  f"## Forward, batch {batch} x {SLICE[0]} x {SLICE[1]} slices (pool window 48)", "",
                  "| preset | layout, precision | ms / batch | Mpixel/s | TFLOP/s | of peak | speed-up |",
                  "|---|---|---|---|---|---|---|", *forward_rows(device, batch, peaks, args.quick, forced), "",
                  f"## Slices per forward pass (small, {auto}, channels-last)", "", "| batch | ms | slices/s |",
                  "|---|---|---|", *batch_rows(device, args.quick), "",
                  "## Training step (batch 8 x 96 x 96, AdamW, all layers, channels-last)", "",
                  "| preset | precision | ms / step | TFLOP/s | speed-up |", "|---|---|---|---|---|",
                  *train_rows(device, args.quick, forced), ""]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        e2e, adapt_rows = end_to_end_rows(device, Path(tmp), args.quick, tuple(args.shape), args.steps)
    lines += [f"## End-to-end restore of a tubes phantom (truth {tuple(args.shape)}, z x4), fp32 vs auto", "",
              "Same model folder (adapted in fp32) for both; region 64 x 128 x 128, chunks 32 x 64 x 64.", "",
              "| preset | precision | output Mvoxel | restore s | speed-up | PSNR (dB) | vs fp32 (dB) | "
              "max abs difference to fp32 |", "|---|---|---|---|---|---|---|---|", *e2e, "",
              "## Adaptation at equal steps (64 patches of 96 px)", "",
              "small: shipped base, surgeon 10% of layers; gopro-width32: from its initialisation (no pretrained "
              "weights yet), all layers. Validation PSNR is evaluated in fp32 for every training precision.", "",
              "| preset | precision (resolved) | steps | adapt wall s | fine-tune s | val PSNR before | val PSNR after |",
              "|---|---|---|---|---|---|---|", *adapt_rows, ""]
    out = args.out or RESULTS / ("compute.md" if device.type == "cpu" else "compute_cuda.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
