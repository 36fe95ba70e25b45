"""Terabyte orchestration figures: task size vs region count, sparse 2 TiB restores, dense throughput vs a copy.

    python benchmarks/scale.py                      # everything, ~30 min on 2 cores; writes results/scale.md
    python benchmarks/scale.py --parts plan,sparse  # a subset: plan, sparse, model, dense
    python benchmarks/scale.py --quick              # smaller volumes, to check the script

Run it alone: with 2 cores, anything else running makes the timings meaningless. Needs ~15 GB of disk in
--workdir (default: a temporary folder, removed at the end).

* plan: metadata-only OME-Zarr volumes (one chunk written) with 1e3..1e6 regions of the default size:
  time to plan and prune, and the pickled size of one region task.
* sparse: a 2 TiB uint16 OME-Zarr (1024 x 32768 x 32768, chunks 64 x 256 x 256, dz/dx = 4) holding 8
  phantom chunks, restored by the CLI (`--method interp`, default LocalCluster): wall time, peak resident
  memory of the client and the workers, regions pruned, files written.
* model: the same 2 TiB geometry with one chunk holding a small cluster of beads, `ssai3d run` (adapt the
  shipped model, then restore), defaults.
* dense: a 2 GiB uint16 volume of noisy texture, `--method interp` (output 4 GiB), against a plain
  dask copy of the output level 0 into an array of the same chunks, shards and codecs.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class TreeRSS:
    """Peak resident memory of a process and each of its descendants (sampled every 0.2 s)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if p.pid not in self.kind:
                        cmd = " ".join(p.cmdline())
                        self.kind[p.pid] = ("client" if p.pid == self.root.pid else
                                            "worker" if "spawn" in cmd or "multiprocessing" in cmd else "other")
                    self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        client = max((v for k, v in self.peak.items() if self.kind.get(k) == "client"), default=0)
        workers = [v for k, v in self.peak.items() if self.kind.get(k) == "worker"]
        return {"client_peak_mib": client / 2**20, "worker_peak_mib": max(workers, default=0) / 2**20,
                "processes": len(self.peak)}


def run_cli(args: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ssai3d_dask.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    mem = TreeRSS(proc.pid)
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    res = mem.stop() | {"wall_s": wall, "returncode": proc.returncode}
    if proc.returncode:
        raise RuntimeError(f"ssai3d {' '.join(args)} failed:\n{out[-3000:]}")
    res["stdout"] = [ln for ln in out.splitlines() if " INFO " not in ln and "region/s" not in ln and ln.strip()]
    import re

    m = re.search(r"restored (\d+) regions \((\d+) background only\) in ([0-9.]+) s", out)
    res["region_phase_s"] = float(m.group(3)) if m else float("nan")
    return res


def files_and_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def part_plan(work: Path, quick: bool) -> list[str]:
    from ssai3d_dask.restoration.pipeline import prepare_restore
    from ssai3d_dask.settings import RestoreSettings
    from ssai3d_dask.restoration.scheduling import task_payload
    from ssai3d_dask.evaluation.simio import write_sparse_volume
    from ssai3d_dask.io.volume import open_volume

    rows = ["| regions | input (z, y, x) | plan + prune | task pickled | build + pickle per task |", "|---|---|---|---|---|"]
    sides = [(1, 8, 125), (10, 10, 100), (10, 100, 100), (100, 100, 100)][: 2 if quick else 4]
    for gz, gy, gx in sides:
        shape = (128 * gz, 256 * gy, 256 * gx)
        path = work / f"plan-{gz}-{gy}-{gx}.ome.zarr"
        write_sparse_volume(path, shape, (64, 256, 256), (0.5, 0.5, 0.5), n_blocks=1, seed=0, kind="beads",
                            pyramid=False)
        vol = open_volume(path)
        t0 = time.perf_counter()
        job = prepare_restore(vol, None, RestoreSettings(method="interp"))
        plan_s = time.perf_counter() - t0
        n = job.plan.n_regions
        idx = np.linspace(0, n - 1, 200).astype(int)
        t0 = time.perf_counter()
        sizes = [len(pickle.dumps(task_payload(job, "out.ome.zarr", int(i)))) for i in idx]
        per = (time.perf_counter() - t0) / len(idx)
        rows.append(f"| {n:,} | {shape} | {plan_s:.2f} s | {min(sizes)}-{max(sizes)} B | {per * 1e6:.0f} us |")
        shutil.rmtree(path)
    return ["## Plan and task size", "", "Metadata-only OME-Zarr inputs (one chunk written), default regions "
            "128 x 256 x 256, `--method interp`. Before this change (issue #10, measured on main): every task "
            "pickled the whole plan, 17 kB and 52 ms per task at 256 regions, 275 kB and 580 ms at 4,096.", "", *rows, ""]


def _sparse_table(name: str, r: dict, out: Path, extra: str = "") -> list[str]:
    files, nbytes = files_and_bytes(out)
    import zarr

    prov = dict(zarr.open_group(str(out), mode="r").attrs)["ssai3d"]["regions"]
    return [f"| {name} | {r['wall_s']:.0f} s | {r['client_peak_mib']:.0f} MiB | {r['worker_peak_mib']:.0f} MiB | "
            f"{prov['total']:,} | {prov['pruned_unwritten']:,} | "
            f"{prov['computed_this_run']} | {files} | {nbytes / 2**20:.0f} MiB |{extra}"]


HEADER = ["| run | wall | client peak RSS | worker peak RSS | regions | pruned | computed | files | on disk |",
          "|---|---|---|---|---|---|---|---|---|"]


def part_sparse(work: Path, quick: bool) -> list[str]:
    from ssai3d_dask.evaluation.simio import write_sparse_volume

    shape = (256, 8192, 8192) if quick else (1024, 32768, 32768)
    src = work / "sparse.ome.zarr"
    t0 = time.perf_counter()
    write_sparse_volume(src, shape, (64, 256, 256), (2.0, 0.5, 0.5), n_blocks=8, seed=1, kind="strands")
    build_s = time.perf_counter() - t0
    dry = run_cli(["restore", str(src), str(work / "dry.ome.zarr"), "--method", "interp", "--dry-run"])
    out = work / "sparse-out.ome.zarr"
    r = run_cli(["restore", str(src), str(out), "--method", "interp"])
    lines = ["## Sparse 2 TiB, `--method interp`", "",
             f"Input {shape} uint16 ({np.prod(shape) * 2 / 2**40:.2f} TiB), chunks 64 x 256 x 256, voxel "
             f"2 x 0.5 x 0.5 um, 8 chunks written with strands phantoms (built in {build_s:.0f} s); output "
             f"{shape[0] * 4} x {shape[1]} x {shape[2]} at 0.5 um ({np.prod(shape) * 8 / 2**40:.1f} TiB). "
             f"`ssai3d restore IN OUT --method interp` on the default LocalCluster; `--dry-run` took "
             f"{dry['wall_s']:.1f} s.", "", *HEADER, *_sparse_table("interp", r, out), ""]
    shutil.rmtree(out)
    shutil.rmtree(src)
    return lines


def part_model(work: Path, quick: bool) -> list[str]:
    import zarr

    from ssai3d_dask.evaluation.simio import write_sparse_volume
    from ssai3d_dask.evaluation.simulate import ForwardModel, simulate

    shape = (256, 8192, 8192) if quick else (1024, 32768, 32768)
    src = work / "beads.ome.zarr"
    write_sparse_volume(src, shape, (64, 256, 256), (2.0, 0.5, 0.5), n_blocks=0, seed=2, pyramid=False)
    sim = simulate("beads", (96, 64, 64), seed=5, model=ForwardModel(0.5, 3.0, z_factor=4))
    cluster = np.round(np.clip(sim.raw, 0, 1) * 60000).astype(np.uint16)
    z0, y0, x0 = 64 * (shape[0] // 128), 256 * (shape[1] // 512) + 96, 256 * (shape[2] // 512) + 96
    arr = zarr.open_array(str(src / "0"), mode="r+")
    arr[z0 + 20:z0 + 20 + cluster.shape[0], y0:y0 + 64, x0:x0 + 64] = cluster
    out = work / "model-out.ome.zarr"
    dry = run_cli(["run", str(src), str(out), "--dry-run"])
    r = run_cli(["run", str(src), str(out)])
    manifest = json.loads((Path(str(out) + ".model") / "manifest.json").read_text())
    lines = ["## Sparse 2 TiB with the shipped model (`ssai3d run`, defaults)", "",
             f"Same geometry; one chunk holds a {cluster.shape} cluster of beads, the rest is unwritten. "
             f"Adaptation (sampling, denoiser, metrics, {manifest['settings']['finetune']['iterations']} fine-tuning "
             f"steps) took {sum(manifest['timings'].values()):.0f} s of the wall time; regions within the network's "
             f"reach of the beads run the network, the other kept regions are background-only and take the "
             f"interpolation. `--dry-run` took {dry['wall_s']:.0f} s.", "", *HEADER, *_sparse_table("run (adapt + restore)", r, out), ""]
    lines += ["Dry run printed:", "", "```", *dry["stdout"], "```", ""]
    shutil.rmtree(out)
    shutil.rmtree(Path(str(out) + ".model"))
    shutil.rmtree(src)
    return lines


def part_dense(work: Path, quick: bool) -> list[str]:
    import dask
    import dask.array as da
    import zarr

    from ssai3d_dask.io.omezarr import MultiscaleWriter

    shape = (64, 1024, 1024) if quick else (256, 2048, 2048)
    src = work / "dense.ome.zarr"
    w = MultiscaleWriter(src, shape, np.uint16, (1.0, 0.5, 0.5), (64, 256, 256), name="dense")

    def texture(block_info=None):
        loc = block_info[None]["array-location"]
        z, y, x = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in loc], indexing="ij")
        rng = np.random.default_rng(loc[0][0] * 7919 + loc[1][0] * 31 + loc[2][0])
        base = 2000 + 1500 * np.sin(x / 9.0) * np.cos(y / 13.0) + 40 * z
        return np.clip(base + rng.normal(0, 50, base.shape), 0, 65535).astype(np.uint16)

    data = da.map_blocks(texture, chunks=da.empty(shape, chunks=(64, 256, 256), dtype=np.uint16).chunks,
                         dtype=np.uint16)
    with dask.config.set(scheduler="threads"):
        da.store(data, w.level0, lock=False)
        w.finalize()
    rows = ["| run | wall | output Mvoxel/s | region phase | region phase Mvoxel/s | client peak RSS | worker peak RSS |",
            "|---|---|---|---|---|---|---|"]
    results = {}
    for name, extra in (("restore interp, default LocalCluster", []),
                        ("restore interp, --workers 1 (torch's 2 threads in one worker)", ["--workers", "1"])):
        out = work / "dense-out.ome.zarr"
        r = run_cli(["restore", str(src), str(out), "--method", "interp", "--overwrite", *extra])
        n_out = shape[0] * 2 * shape[1] * shape[2]
        results[name] = n_out / r["wall_s"] / 1e6
        rows.append(f"| {name} | {r['wall_s']:.1f} s | {results[name]:.1f} | {r['region_phase_s']:.1f} s | "
                    f"{n_out / r['region_phase_s'] / 1e6:.1f} | {r['client_peak_mib']:.0f} MiB | "
                    f"{r['worker_peak_mib']:.0f} MiB |")
    lvl0 = zarr.open_array(str(out / "0"), mode="r")
    copy = zarr.create_array(str(work / "copy.zarr"), shape=lvl0.shape, chunks=lvl0.chunks, shards=lvl0.shards,
                             dtype=lvl0.dtype, compressors=lvl0.compressors, fill_value=lvl0.fill_value,
                             overwrite=True)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        da.store(da.from_zarr(lvl0, chunks=lvl0.shards or lvl0.chunks), copy, lock=False)
    copy_s = time.perf_counter() - t0
    copy_rate = np.prod(lvl0.shape) / copy_s / 1e6
    rows.append(f"| plain copy of the output level 0 (`da.store(da.from_zarr(...))`, same chunks/shards/codecs, "
                f"threads) | {copy_s:.1f} s | {copy_rate:.1f} | - | - | - | - |")
    best = max(results.values())
    shutil.rmtree(out)
    shutil.rmtree(work / "copy.zarr")
    shutil.rmtree(src)
    return ["## Dense volume: `--method interp` against a plain copy", "",
            f"Input {shape} uint16 ({np.prod(shape) * 2 / 2**30:.1f} GiB, noisy texture, chunks 64 x 256 x 256, "
            f"dz/dx = 2); output {shape[0] * 2} x {shape[1]} x {shape[2]} ({np.prod(shape) * 4 / 2**30:.1f} GiB) "
            f"plus its pyramid. Restore times are end to end (cluster start, statistics, regions, pyramid, "
            f"metadata); the copy writes level 0 only.", "", *rows, "",
            f"Restore / copy throughput, end to end: {best / copy_rate:.0%} (best restore configuration).", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="plan,sparse,model,dense")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scale.md")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ssai3d-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = {"plan": part_plan, "sparse": part_sparse, "model": part_model, "dense": part_dense}
    lines = [f"# Terabyte orchestration ({platform.machine()}, {__import__('os').cpu_count()} cores, "
             f"{'quick' if args.quick else 'full'} sizes)", "",
             f"Produced by `python benchmarks/scale.py{' --quick' if args.quick else ''}`.", ""]
    t0 = time.perf_counter()
    try:
        for name in args.parts.split(","):
            t = time.perf_counter()
            lines += parts[name](work, args.quick)
            print(f"[{name}] {time.perf_counter() - t:.0f} s", flush=True)
            print("\n".join(lines[-12:]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lines.append(f"Total benchmark time {time.perf_counter() - t0:.0f} s.")
    if not args.quick:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
