"""Probe: does torch.compile (inductor) speed up the restore forward? Prints ms per batch, eager vs compiled.

Run: python benchmarks/compile_probe.py [--device cuda] [--preset small] [--precision bf16] [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from ssai3d_dask.models.precision import autocast
from ssai3d_dask.restoration.kernels import apply_network

from profile_forward import restore_setup  # benchmarks/ beside this script


def bench(fn, x, device, n=10):
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize() if device.type == "cuda" else None
    t = time.perf_counter()
    for _ in range(n):
        fn(x)
    torch.cuda.synchronize() if device.type == "cuda" else None
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    device = torch.device(args.device)
    model, x = restore_setup(args.preset, device, args.batch)
    compiled = torch.compile(lambda t: apply_network(model, t))
    with torch.no_grad(), autocast(args.precision, device):
        eager = bench(lambda t: apply_network(model, t), x, device)
        t0 = time.perf_counter()
        compiled(x)
        first = time.perf_counter() - t0
        comp = bench(compiled, x, device)
        err = float((compiled(x).float() - apply_network(model, x).float()).abs().max())
    print(f"{args.preset} {args.precision} batch {args.batch}: eager {eager:.1f} ms, compiled {comp:.1f} ms "
          f"({eager / comp:.2f}x), first compiled call {first:.1f} s, max difference {err:.2e}")


if __name__ == "__main__":
    main()
