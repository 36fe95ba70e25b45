"""Restoration performance on this machine: overhead vs pure forward, memory vs volume size, workers.

Run: python benchmarks/restore_perf.py  (writes benchmarks/results/restore_perf.md)

* Overhead: end-to-end ``restore`` (LocalCluster, reading, resampling, halos, writing, pyramid) vs the
  pure model forward time on the same number of slice pixels (the extended XZ/YZ slices restore feeds
  the network), same batch size and threads.
* Memory: peak RSS of the whole process tree (client + workers) restoring a volume and the same
  volume grown 8x (2x per axis) with the same region size.
* Workers: throughput with 1 and 2 workers (1 thread each, torch threads = cores / workers).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
CHILD = r'''
import json, sys, threading, time, os, psutil, numpy as np, torch
from ssai3d_dask.restoration.cluster import make_client
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.io.volume import open_volume
src, model, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
peak = [0]
def watch():
    me = psutil.Process()
    while True:
        try:
            rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
        except psutil.Error:
            continue
        peak[0] = max(peak[0], rss)
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
client = make_client(workers=workers)
vol = open_volume(src)
t = time.perf_counter()
restore(vol, model, out, RestoreSettings(chunks=(32, 64, 64), region=(32, 128, 128), halo=64, skip_empty=False),
        overwrite=True, client=client, progress=False)
secs = time.perf_counter() - t
client.close()
print(json.dumps({"seconds": secs, "peak_rss": peak[0], "voxels": int(np.prod(open_volume(out).shape))}))
'''


def make_inputs(tmp: Path) -> tuple[Path, Path, Path]:
    from ssai3d_dask.adaptation.adapt import adapt
    from ssai3d_dask.settings import AdaptSettings
    from ssai3d_dask.settings import FinetuneSettings
    from ssai3d_dask.io.omezarr import write_multiscale
    from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
    from ssai3d_dask.io.volume import open_volume

    sim = simulate("tubes", (32, 128, 128), seed=3, model=ForwardModel(0.5, 3.0, z_factor=4))
    small = np.round(sim.raw * 60000).astype(np.uint16)
    write_multiscale(small, tmp / "small.ome.zarr", sim.raw_voxel_size_um, (8, 128, 128))
    big = np.tile(small, (2, 2, 2))  # 8x the voxels, same structure statistics
    write_multiscale(big, tmp / "big.ome.zarr", sim.raw_voxel_size_um, (8, 128, 128))
    adapt(open_volume(tmp / "small.ome.zarr"), tmp / "model",
          AdaptSettings(n_patches=32, patch_px=64, finetune=FinetuneSettings(iterations=10)), progress=False)
    return tmp / "small.ome.zarr", tmp / "big.ome.zarr", tmp / "model"


def run(src, model, out, workers) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(model), str(out), str(workers)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def pure_forward_seconds(model_dir: Path, z_out: int, y: int, x: int, halo: int, region=(32, 128, 128)) -> float:
    """Model-only time for the slices restore feeds the network on this volume (batch 4, all cores)."""
    import torch

    from ssai3d_dask.models.folder import AdaptedModel
    from ssai3d_dask.models.nafnet import gray_forward

    torch.set_num_threads(2)
    m = AdaptedModel.load(model_dir).model
    n_regions = [-(-a // r) for a, r in zip((z_out, y, x), region)]
    shapes = []  # (count, H, W) of the slices per region
    for _ in range(int(np.prod(n_regions))):
        h = region[0] + 2 * halo
        shapes.append((region[1], h, region[2] + 2 * halo))
        shapes.append((region[2], h, region[1] + 2 * halo))
    t = time.perf_counter()
    with torch.no_grad():
        for count, h, w in shapes:
            for i in range(0, count, 4):
                gray_forward(m, torch.rand(min(4, count - i), 1, h, w))
    return time.perf_counter() - t


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        small, big, model = make_inputs(tmp)
        r1 = run(small, model, tmp / "o1.ome.zarr", 1)
        rb = run(big, model, tmp / "ob.ome.zarr", 1)
        rb2 = run(big, model, tmp / "ob2.ome.zarr", 2)
        fwd = pure_forward_seconds(model, 64, 256, 256, 64)
    lines = [f"# Restore performance ({platform.machine()}, 2 cores, small preset, CPU)", "",
             "Volume V: tubes phantom, raw 8 x 128 x 128 uint16 at dz/dx = 4 -> output 32 x 128 x 128 (1 region); "
             "8V: the same tiled 2x per axis -> output 64 x 256 x 256 (8 regions). Regions 32 x 128 x 128, "
             "halo 64, batch 4.", "",
             "| measure | value |", "|---|---|",
             f"| end-to-end restore of 8V, 1 worker | {rb['seconds']:.1f} s ({rb['voxels'] / rb['seconds'] / 1e3:.1f} "
             f"kvoxel/s) |",
             f"| pure forward on the same slices | {fwd:.1f} s |",
             f"| overhead (restore / forward - 1) | {100 * (rb['seconds'] / fwd - 1):+.1f} % |",
             f"| 8V with 2 workers | {rb2['seconds']:.1f} s ({rb['seconds'] / rb2['seconds']:.2f}x of 1 worker) |",
             f"| peak RSS, volume V (1 worker) | {r1['peak_rss'] / 2**20:.0f} MiB |",
             f"| peak RSS, volume 8V, same regions | {rb['peak_rss'] / 2**20:.0f} MiB "
             f"({rb['peak_rss'] / r1['peak_rss']:.2f}x) |",
             f"| time for V / 8V | {r1['seconds']:.1f} s / {rb['seconds']:.1f} s |"]
    (RESULTS / "restore_perf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
