"""Throughput of a dense restoration against the network alone (issue 43).

A dense uint16 phantom (tissue, tiled to ``--shape``) is written as OME-Zarr; a model folder is adapted to it
with the package's defaults but one fine-tuning step (the cost of restoring does not depend on how long
the weights were tuned: same network, same calibrated denoiser, same measured reach). Then, one at a time,
alone on the machine:

* ``restore`` end to end with the given settings (defaults unless ``--region``/``--halo``): output Mvoxel/s;
* the same network alone on exactly the output's XZ and YZ core slices (no halo; same precision, batch
  rule and threads), timed on a sample of slices and scaled to all of them: the rate end to end should
  approach;
* the computed-pixel ratio of the plan: slice pixels the network runs on over 2 x output voxels;
* ``--method interp`` end to end against a plain copy of level 0 (read the input, write the output's
  level 0 with its chunks), with zarr-python's codec pipeline and, when installed, ``zarrs``'.

Run: python benchmarks/throughput.py [--shape 32,512,512] [--z-factor 2] [--label NAME] [--region Z,Y,X]
Writes a labelled row into benchmarks/results/throughput.json in place of the row for the same input and mode
(that one goes to results/archive/throughput_history.json) and rewrites throughput.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.omezarr import write_multiscale
from ssai3d_dask.io.volume import open_volume
from ssai3d_dask.models.folder import AdaptedModel
from ssai3d_dask.models.precision import prepare, resolve_precision
from ssai3d_dask.restoration.dryrun import dry_run
from ssai3d_dask.restoration.kernels import run_slices
from ssai3d_dask.restoration.pipeline import prepare_restore, restore
from ssai3d_dask.settings import AdaptSettings, FinetuneSettings, RestoreSettings

RESULTS = Path(__file__).parent / "results"


def make_input(path: Path, shape: tuple[int, int, int], z_factor: int) -> None:
    """A dense tissue phantom (noisy, blurred along z), tiled to ``shape``, as uint16 OME-Zarr."""
    tile = (shape[0], min(shape[1], 256), min(shape[2], 256))
    sim = simulate("tissue", (tile[0] * z_factor, tile[1], tile[2]), seed=0,
                   model=ForwardModel(0.5, 3.0, z_factor=z_factor, photons=200.0))
    raw = sim.raw[: tile[0]]
    raw = 1000 + 20000 * (raw - raw.min()) / max(float(np.ptp(raw)), 1e-6)
    reps = (1, -(-shape[1] // tile[1]), -(-shape[2] // tile[2]))
    full = np.tile(raw, reps)[: shape[0], : shape[1], : shape[2]].astype(np.uint16)
    write_multiscale(full, path, (float(z_factor), 1.0, 1.0), chunks=(min(shape[0], 64), 128, 128))


def network_alone(model_dir: Path, out_shape: tuple[int, int, int], precision: str, threads: int,
                  device: str = "cpu", batch: int | None = None, compile: bool = False, sample: int = 8) -> float:
    """Seconds the network takes on every XZ and YZ core slice of the output (a sample, scaled), with the
    restore's precision, batch rule and compilation."""
    adapted = AdaptedModel.load(model_dir)
    model = adapted.model
    prepare(model, device)
    used = resolve_precision(precision, device)
    torch.set_num_threads(threads)
    z, y, x = out_shape
    rng = np.random.default_rng(0)
    total = 0.0
    dev = torch.device(device)
    sample = sample if device == "cpu" else 4 * (batch or 32)
    for n, h, w in ((y, z, x), (x, z, y)):
        k = min(sample, n)
        slices = rng.random((k, h, w), dtype=np.float32)
        run_slices(model, slices[: min(k, batch or 1)], batch, dev, used, compile)  # warm-up (and compile)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        run_slices(model, slices, batch, dev, used, compile)
        if device == "cuda":
            torch.cuda.synchronize()
        total += (time.perf_counter() - t) * n / k
    return total


def plain_copy(src: Path, dst: Path, chunks, pipeline: str | None) -> float:
    """Read level 0 of the OME-Zarr ``src`` and write it to a new array with ``chunks``, chunk-parallel via
    dask: given the restored output, the least any method writing that output must do."""
    import dask.array as da

    cfg = {"codec_pipeline.path": pipeline} if pipeline else {}
    with zarr.config.set(cfg):
        a = da.from_zarr(str(src / "0"))
        t = time.perf_counter()
        out = zarr.create_array(str(dst), shape=a.shape, chunks=tuple(chunks), dtype=a.dtype, overwrite=True)
        da.store(a.rechunk(tuple(chunks)), out, lock=False)
        return time.perf_counter() - t


def memory_fit(vol, model_dir: Path, regions: list[tuple[int, int, int]], network: bool = True) -> list[dict]:
    """Peak resident memory of one region task for each region shape (its crop read, then computed), to
    check ``plan.region_bytes``; each region is the middle one of a plan with that region shape. Without
    ``network`` the network is replaced by a copy of its input (same buffers, minutes instead of hours for
    large regions on a CPU; the network's own activations are per batch and not measured then)."""
    from ssai3d_dask.restoration import kernels
    from ssai3d_dask.restoration.dryrun import _PeakRSS
    from ssai3d_dask.restoration.plan import region_bytes
    from ssai3d_dask.restoration.task import compute_region

    if not network:
        kernels.run_slices = lambda model, slices, *a, **k: np.array(slices, np.float32, copy=True)
    rows = []
    for shape in regions:
        job = prepare_restore(vol, model_dir, RestoreSettings(region=shape, chunks=(16, 16, 16)))
        plan = job.plan
        region = plan.region(int(np.ravel_multi_index(tuple(g // 2 for g in plan.grid), plan.grid)))  # inside
        crop = job.source.read(plan.input_crop(region))
        with _PeakRSS() as mem, torch.inference_mode():
            compute_region(plan, region, crop, job.spec, job.resources)
        idx = np.unravel_index(region.index, plan.grid)
        ext = int(np.prod([int(lengths[k]) for lengths, k in zip(plan.ext_lengths(), idx)]))  # edges included
        rows.append({"region": list(region.shape), "halo": plan.halo[0], "ext_voxels": ext, "network": network,
                     "input": list(vol.shape), "core_voxels": int(np.prod(region.shape)),
                     "peak_bytes": mem.peak - mem.base + crop.nbytes, "estimate_bytes": region_bytes(region.shape, plan.halo[0])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="32,512,512")
    ap.add_argument("--z-factor", type=int, default=2)
    ap.add_argument("--label", default="current defaults")
    ap.add_argument("--region", default=None, help="Z,Y,X output voxels per task (default: the settings')")
    ap.add_argument("--halo", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interp-only", action="store_true",
                    help="skip the network (restore and network alone): the plan's pixel ratio, interp and copies only")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--work", type=Path, default=None, help="keep the input and model here between runs")
    ap.add_argument("--memory", default=None, help="only measure the peak memory of one task for these regions, "
                    "e.g. 64,256,256;128,256,512 (written into results/throughput_memory.json in place of earlier rows for the same regions)")
    ap.add_argument("--memory-copy-network", action="store_true",
                    help="with --memory: replace the network by a copy (large regions in minutes on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    src, model_dir = work / f"in-{'x'.join(map(str, shape))}-z{args.z_factor}.ome.zarr", work / "model"
    if not src.exists():
        make_input(src, shape, args.z_factor)
    vol = open_volume(src)
    if not (model_dir / "manifest.json").exists():
        adapt(vol, model_dir, AdaptSettings(finetune=FinetuneSettings(iterations=1)), progress=False, overwrite=True)
    if args.memory:
        rows = memory_fit(vol, model_dir, [tuple(int(v) for v in r.split(",")) for r in args.memory.split(";")],
                          network=not args.memory_copy_network)
        mpath = RESULTS / "throughput_memory.json"
        rows = [dict(r, date=time.strftime("%Y-%m-%d")) for r in rows]
        keep_current(mpath, rows, lambda r: (tuple(r["region"]), r["network"], tuple(r["input"])))
        return
    kw = {"region": tuple(int(v) for v in args.region.split(","))} if args.region else {}
    if args.halo is not None:
        kw["halo"] = args.halo
    settings = RestoreSettings(device=args.device, **kw)
    job = prepare_restore(vol, model_dir, settings)
    report = dry_run(job, None, measure=False)
    row = {"label": args.label, "shape_in": list(shape), "z_factor": args.z_factor, "region": report["region"],
           "halo": report["halo"], "output": report["output"]["shape"], "threads": args.threads,
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d")}
    row["computed_pixel_ratio"] = report.get("computed_pixel_ratio")
    out = work / "out.ome.zarr"
    voxels = int(np.prod(report["output"]["shape"]))
    row["precision"] = resolve_precision(settings.precision, args.device)
    row["device"] = args.device if args.device == "cpu" else torch.cuda.get_device_name(0)
    if not args.interp_only:
        t = time.perf_counter()
        restore(vol, model_dir, out, settings, overwrite=True, progress=False)
        row["restore_s"] = time.perf_counter() - t
        row["restore_mvox_s"] = voxels / 1e6 / row["restore_s"]
        row["network_s"] = network_alone(model_dir, tuple(report["output"]["shape"]), settings.precision,
                                         args.threads, args.device, job.spec.batch, job.spec.compile)
        row["network_mvox_s"] = voxels / 1e6 / row["network_s"]
        row["fraction_of_network"] = row["network_s"] / row["restore_s"]
    t = time.perf_counter()
    restore(vol, None, out, RestoreSettings(method="interp", **kw), overwrite=True, progress=False)
    row["interp_s"] = time.perf_counter() - t
    row["interp_mvox_s"] = voxels / 1e6 / row["interp_s"]
    chunks = report["chunks"]
    row["copy_of"] = "output level 0"
    row["copy_s"] = {"zarr-python": plain_copy(out, work / "copy.zarr", chunks, None)}
    try:
        import zarrs  # noqa: F401

        row["copy_s"]["zarrs"] = plain_copy(out, work / "copy.zarr", chunks, "zarrs.ZarrsCodecPipeline")
    except ImportError:
        row["copy_s"]["zarrs"] = None
    shutil.rmtree(work / "copy.zarr", ignore_errors=True)
    print(json.dumps(row, indent=1))
    jpath = RESULTS / "throughput.json"
    write_md(keep_current(jpath, [row], lambda r: (tuple(r["shape_in"]), r["z_factor"], r.get("restore_s") is None)))


def keep_current(path: Path, new: list[dict], key) -> list[dict]:
    """Write ``new`` into the record at ``path`` in place of the rows with the same ``key`` (same input and
    mode); the rows they replace go to ``archive/<name>_history.json``. Returns the current rows."""
    rows = json.loads(path.read_text()) if path.exists() else []
    keys = {key(r) for r in new}
    old = [r for r in rows if key(r) in keys]
    if old:
        hist = RESULTS / "archive" / f"{path.stem}_history.json"
        hist.write_text(json.dumps((json.loads(hist.read_text()) if hist.exists() else []) + old, indent=1))
    rows = [r for r in rows if key(r) not in keys] + new
    path.write_text(json.dumps(rows, indent=1))
    return rows


def write_md(rows: list[dict]) -> None:
    lines = ["# Throughput (benchmarks/throughput.py)", "",
             "Dense tissue phantom (uint16 OME-Zarr), model adapted with the defaults (1 fine-tuning step), "
             "run alone on the machine. Network alone: the same network, precision and batch rule on exactly "
             "the output's XZ + YZ core slices. Computed-pixel ratio: slice pixels the network runs on / "
             "(2 x output voxels). Copy: level 0 (of the input in the first rows, of the output from the "
             "interp-only rows on) read and written with the output's chunks.", "",
             "| label | input | region / halo | output Mvox | restore s (Mvox/s) | network alone s | end to end / "
             "network | pixel ratio | interp s | copy s zarr-python / zarrs | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cp = r["copy_s"]
        net = r.get("restore_s") is not None
        lines.append(
            f"| {r['label']} | {'x'.join(map(str, r['shape_in']))} dz/dx {r['z_factor']} | {r['region']} / {r['halo']} | "
            f"{np.prod(r['output']) / 1e6:.1f} | "
            + (f"{r['restore_s']:.1f} ({r['restore_mvox_s']:.3f}) | {r['network_s']:.1f} | "
               f"{100 * r['fraction_of_network']:.0f}% | " if net else "- | - | - | ")
            + f"{r['computed_pixel_ratio'] or '-'} | {r['interp_s']:.1f} | "
            f"{cp['zarr-python']:.1f} / {cp['zarrs'] if cp['zarrs'] is None else round(cp['zarrs'], 1)} | "
            f"{r.get('device', 'cpu')}, {r['machine']}, {r['threads']} threads |")
    (RESULTS / "throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
