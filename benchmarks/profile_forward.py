"""Where a restore forward pass spends its time: torch profiler, operators by self time.

Run: python benchmarks/profile_forward.py [--preset small] [--device cpu|cuda] [--precision fp32|bf16]
     [--batch 4] [--rows 20]

The input is a batch of extended restore slices (256 z rows x 384 px: a 128 x 256 core plus 64 px halos),
the model channels-last with the pool window of adaptation and inference (48 px for ``small``).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from ssai3d_dask.models.nafnet import build
from ssai3d_dask.models.precision import as_input, autocast, prepare
from ssai3d_dask.restoration.kernels import apply_network


def restore_setup(preset: str, device: torch.device, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A fresh preset with the inference pool window, channels-last on ``device``, and a batch of extended
    restore slices (256 x 384)."""
    model = build(preset).eval()
    model.set_pool_window(model.local_window())
    prepare(model, device)
    return model, as_input(torch.rand(batch, 1, 256, 384, device=device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rows", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    model, x = restore_setup(args.preset, device, args.batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), autocast(args.precision, device):
        for _ in range(2):
            apply_network(model, x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(3):
                apply_network(model, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"# {args.preset}, {args.precision}, {device}, batch {args.batch} x 256 x 384, 3 forward passes")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
