"""``--dry-run``: the plan of a restoration and what it will cost, without computing it.

Everything is counted exactly from the plan (regions, pruning, files, bytes) except time and memory,
which are measured: one calibration piece (a single output chunk of a real, non-pruned region, with the
full halo) is restored here, timed and its peak resident memory sampled, then scaled to each region by a
work model: for networks the pixels of the XZ/YZ slices they run on, ``cy (cz+2h)(cx+2h) + cx (cz+2h)(cy+2h)``;
for Richardson-Lucy and interpolation the voxels of the extended crop ``(cz+2h)(cy+2h)(cx+2h)``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np

from ssai3d_dask.restoration.pipeline import RestoreJob
from ssai3d_dask.restoration.task import compute_region
from ssai3d_dask.restoration.plan import computed_pixel_ratio, halo_work, make_plan, region_work

logger = logging.getLogger(__name__)


class _PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def calibrate(job: RestoreJob) -> dict | None:
    """Restore one output chunk of the largest kept region (with the full halo) here; time and memory."""
    import torch

    kept = np.flatnonzero(job.keep.ravel())
    if not kept.size:
        return None
    plan = job.plan
    lengths = [np.asarray(c) for c in plan.core_lengths()]
    sizes = np.multiply.outer(np.multiply.outer(lengths[0], lengths[1]), lengths[2]).ravel()[kept]
    region = plan.region(int(kept[int(np.argmax(sizes))]))
    piece = make_plan(plan.in_shape, plan.z_factor, plan.chunks, plan.chunks, plan.halo)
    start = [s.start // c for s, c in zip(region.core, plan.chunks)]
    sub = piece.region(int(np.ravel_multi_index(start, piece.grid)))
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    crop = job.source.read(piece.input_crop(sub))
    read_s = time.perf_counter() - t0
    spec = job.spec.replace(skip_background=False)  # time the real computation, even on a dim piece
    if spec.compile:  # compile first: the estimate is for the compiled steady state
        with torch.inference_mode():
            compute_region(piece, sub, crop, spec, job.resources)
    with _PeakRSS() as mem, torch.inference_mode():
        t0 = time.perf_counter()
        compute_region(piece, sub, crop, spec, job.resources)
        seconds = time.perf_counter() - t0
    ext_len = [int(lengths[k]) for lengths, k in zip(piece.ext_lengths(), start)]  # the piece's own crop
    work = float(region_work([np.array([s]) for s in sub.shape], [np.array([e]) for e in ext_len],
                             job.method.work_view(job.settings.view))[0, 0, 0])
    ext = math.prod(ext_len)
    return {"core": list(sub.shape), "seconds": seconds, "read_seconds": read_s, "work": work,
            "peak_rss_bytes": mem.peak - mem.base, "ext_voxels": ext, "threads": torch.get_num_threads(),
            "device": job.spec.device}


def _units_touched(lengths: np.ndarray, unit: int) -> np.ndarray:
    return np.ceil(np.maximum(lengths, 0) / unit)


def dry_run(job: RestoreJob, out: str | Path | None = None, resume: bool = False, measure: bool = True) -> dict:
    """Count and measure; returns a dict that :func:`format_report` prints."""
    from ssai3d_dask.io.omezarr import DONE_DIR

    plan, levels = job.plan, job.levels
    keep = job.keep
    n_keep = int(keep.sum())
    done = 0
    if resume and out is not None and (Path(out) / DONE_DIR).exists():
        done = sum(1 for e in os.scandir(Path(out) / DONE_DIR) if e.name.endswith(".json"))
    core = plan.core_lengths()
    itemsize_in = job.source.dtype.itemsize
    itemsize_out = job.dtype.itemsize
    in_len = [hi - lo for lo, hi in plan.input_bounds()]
    read_bytes = float((np.multiply.outer(np.multiply.outer(in_len[0], in_len[1]), in_len[2]) * keep).sum()) * itemsize_in
    files = 0.0
    written = 0.0
    per_level = []
    for i, lv in enumerate(levels):
        unit = lv.shards or lv.chunks
        if lv.in_task:
            starts = [np.arange(n) * r // f for n, r, f in zip(plan.grid, plan.region_shape, lv.factor)]
            lens = [np.minimum(s + r // f, n) - s for s, r, f, n in zip(starts, plan.region_shape, lv.factor, lv.shape)]
            counts = [_units_touched(ln, u) for ln, u in zip(lens, unit)]
            f = float((np.multiply.outer(np.multiply.outer(counts[0], counts[1]), counts[2]) * keep).sum())
            vox = float((np.multiply.outer(np.multiply.outer(lens[0], lens[1]), lens[2]) * keep).sum())
        else:
            from ssai3d_dask.io.tissue import Occupancy

            occ = Occupancy(keep, tuple(float(r) for r in plan.region_shape))  # type: ignore[arg-type]
            bounds = [(np.arange(-(-n // c)) * c * fa, np.minimum((np.arange(-(-n // c)) + 1) * c, n) * fa)
                      for n, c, fa in zip(lv.shape, lv.chunks, lv.factor)]
            hit = occ.any_in(bounds)
            f = float(hit.sum())
            vox = f * math.prod(lv.chunks)
        files += f
        written += vox * itemsize_out
        per_level.append({"level": i, "shape": list(lv.shape), "chunks": list(lv.chunks),
                          "shards": list(lv.shards) if lv.shards else None,
                          "written_by": "region tasks" if lv.in_task else "final pass", "files": int(f)})
    report = {
        "input": {"shape": list(plan.in_shape), "dtype": str(job.source.dtype),
                  "voxel_size_um": list(job.geometry.in_voxel_um)},
        "output": {"shape": list(plan.out_shape), "dtype": str(job.dtype), "voxel_size_um": list(job.geometry.out_voxel_um),
                   "uncompressed_bytes": math.prod(plan.out_shape) * itemsize_out, "fill_value": job.fill_value},
        "method": job.settings.method.name, "region": list(plan.region_shape), "chunks": list(plan.chunks),
        "halo": plan.halo[0],
        "regions": {"total": plan.n_regions, "pruned_unwritten": job.pruned["unwritten"], "kept": n_keep,
                    "already_done": done, "to_run": max(n_keep - done, 0)},
        "levels": per_level,
        "files": {"data": int(files), "completion_records": n_keep},
        "bytes_read": read_bytes, "bytes_written_max": written, "notes": list(job.notes),
        "computed_pixel_ratio": round(computed_pixel_ratio(plan, keep, job.method.work_view(job.settings.view)), 3),
    }
    if measure:
        cal = calibrate(job)
        report["calibration"] = cal
        if cal is not None:
            work = region_work(core, plan.ext_lengths(), job.method.work_view(job.settings.view))
            todo_frac = report["regions"]["to_run"] / max(n_keep, 1)
            total = float((work * keep).sum()) * todo_frac * cal["seconds"] / cal["work"]
            region_ext = math.prod(r + 2 * plan.halo[0] for r in plan.region_shape)
            report["estimate"] = {
                "seconds_this_machine": total + cal["read_seconds"] * report["regions"]["to_run"],
                "seconds_per_region": halo_work(plan.region_shape, plan.halo[0],
                                                job.method.work_view(job.settings.view))
                * cal["seconds"] / cal["work"],
                "peak_bytes_per_task": cal["peak_rss_bytes"] * region_ext / cal["ext_voxels"]}
            input_bytes = math.prod(plan.in_shape) * itemsize_in
            report["estimate"]["hours_per_tb_input"] = (report["estimate"]["seconds_this_machine"] / 3600
                                                        / max(input_bytes / 1e12, 1e-30))
    return report


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def format_report(r: dict, workers: int | None = None, threads_per_worker: int = 1) -> str:
    """The dry-run report as lines a user reads before deciding to go."""
    reg = r["regions"]
    lines = [
        f"method       {r['method']}",
        f"input        {r['input']['shape']} {r['input']['dtype']}, voxel {r['input']['voxel_size_um']} um",
        f"output       {r['output']['shape']} {r['output']['dtype']}, voxel {r['output']['voxel_size_um']} um, "
        f"{_human(r['output']['uncompressed_bytes'])} uncompressed; unwritten chunks read {r['output']['fill_value']:g}",
        f"plan         regions {r['region']} of chunks {r['chunks']}, halo {r['halo']}",
        f"regions      {reg['total']} total, {reg['pruned_unwritten']} pruned (unwritten input), "
        f"{reg['already_done']} already done, {reg['to_run']} to run",
        f"reads        {_human(r['bytes_read'])} (input crops with halo)",
        f"writes       at most {_human(r['bytes_written_max'])} uncompressed, {r['files']['data']} data files "
        f"+ {r['files']['completion_records']} completion records",
        f"work         {r['computed_pixel_ratio']:.2f}x the least the method computes (halo overhead; "
        f"larger --region or a smaller --halo lowers it)",
    ]
    for lv in r["levels"]:
        shards = f", shards {lv['shards']}" if lv["shards"] else ""
        lines.append(f"  level {lv['level']:<2}   {lv['shape']} chunks {lv['chunks']}{shards}: {lv['written_by']}, "
                     f"{lv['files']} files")
    cal = r.get("calibration")
    if cal:
        est = r["estimate"]
        tasks = (workers or 1) * threads_per_worker
        lines += [
            f"calibration  one {cal['core']} piece with halo: {cal['seconds']:.1f} s compute + {cal['read_seconds']:.2f} s "
            f"read on {cal['device']} ({cal['threads']} threads), peak +{_human(cal['peak_rss_bytes'])}",
            f"memory       ~{_human(est['peak_bytes_per_task'])} per running task (scaled to a full region), "
            f"x {tasks} tasks per machine at once" + (f" = ~{_human(est['peak_bytes_per_task'] * tasks)}" if tasks > 1 else ""),
            f"time         ~{_duration(est['seconds_per_region'])} per full region here; at most "
            f"~{_duration(est['seconds_this_machine'])} for the run on this machine (regions found background-only "
            f"at run time take the interpolation and cost far less; a cluster with N times this machine's "
            f"compute: divide by N)",
            f"cost         ~{est['hours_per_tb_input']:.3g} h per TB of input on this machine at these settings",
        ]
    elif cal is None and "calibration" in r:
        lines.append("time         nothing to run")
    lines += [f"note         {n}" for n in r["notes"]]
    return "\n".join(lines)
