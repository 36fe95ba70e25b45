"""zarr-python's codec pipeline against zarrs' on the output's shard layout (issue 43).

A dense uint16 volume (smooth tissue-like noise, so it compresses as microscopy does) is written as a
sharded zarr v3 array with the restore's default codecs, one region-sized shard per write (as region tasks
write), then read back chunk-aligned region by region, with each pipeline. The arrays are compared: the
decoded data must be equal, and the stored bytes are compared too.

Run: python benchmarks/codecs.py [--shape 128,1024,1024] [--chunks 64,128,128] [--shards 128,512,512]
Writes benchmarks/results/codecs.md.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy.ndimage import gaussian_filter

from ssai3d_dask.io.codecs import DEFAULT, ZARRS

RESULTS = Path(__file__).parent / "results"


def volume(shape) -> np.ndarray:
    rng = np.random.default_rng(0)
    tile = gaussian_filter(rng.normal(size=(min(shape[0], 64), 256, 256)).astype(np.float32), 2.0)
    tile = (1000 + 8000 * (tile - tile.min()) / np.ptp(tile) + rng.poisson(30, tile.shape)).astype(np.uint16)
    reps = [-(-s // t) for s, t in zip(shape, tile.shape)]
    return np.tile(tile, reps)[: shape[0], : shape[1], : shape[2]]


def run(pipeline: str, data: np.ndarray, path: Path, chunks, shards) -> dict:
    with zarr.config.set({"codec_pipeline.path": pipeline}):
        arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, shards=shards, dtype=data.dtype,
                                overwrite=True)
        grid = [-(-n // s) for n, s in zip(data.shape, shards)]
        boxes = [tuple(slice(i * s, min(i * s + s, n)) for i, s, n in zip(idx, shards, data.shape))
                 for idx in np.ndindex(*grid)]
        t = time.perf_counter()
        for box in boxes:
            arr[box] = data[box]
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        back = np.empty_like(data)
        for box in boxes:
            back[box] = arr[box]
        read_s = time.perf_counter() - t
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json"):
        h.update(f.read_bytes())
    return {"write_s": write_s, "read_s": read_s, "equal": bool(np.array_equal(back, data)), "bytes": h.hexdigest(),
            "stored": sum(p.stat().st_size for p in path.rglob("*") if p.is_file())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="128,1024,1024")
    ap.add_argument("--chunks", default="64,128,128")
    ap.add_argument("--shards", default="128,512,512")
    args = ap.parse_args()
    shape, chunks, shards = (tuple(int(v) for v in a.split(",")) for a in (args.shape, args.chunks, args.shards))
    data = volume(shape)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pipeline in (("zarr-python", DEFAULT), ("zarrs", ZARRS)):
            rows[name] = run(pipeline, data, Path(tmp) / name, chunks, shards)
            print(name, rows[name], flush=True)
    mib = data.nbytes / 2**20
    lines = ["# Codec pipelines on the output's shard layout (benchmarks/codecs.py)", "",
             f"{shape} uint16 ({mib:.0f} MiB), chunks {chunks}, shards {shards} (one write per shard, as region "
             f"tasks write), zarr {zarr.__version__}, default codecs; {platform.machine()}, "
             f"{__import__('os').cpu_count()} cores, run alone.", "",
             "| pipeline | write s (MiB/s) | read s (MiB/s) | decoded equal | stored bytes identical |", "|---|---|---|---|---|"]
    same = rows["zarr-python"]["bytes"] == rows["zarrs"]["bytes"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['write_s']:.2f} ({mib / r['write_s']:.0f}) | {r['read_s']:.2f} "
                     f"({mib / r['read_s']:.0f}) | {r['equal']} | {same} |")
    (RESULTS / "codecs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
