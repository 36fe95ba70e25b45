"""Time to an adapted model: the former fine-tuning defaults against the current ones (issue 42).

Former (until this change): whole 96-px pairs. Current: random 64-px crops of the same pairs (whole pairs where
the crop would not hold the blur: :func:`ssai3d_dask.adaptation.finetune.training_crop`). Both stop when the
validation PSNR has not gained 0.01 dB in 250 steps, then decay the rate over 250 steps. Fast (an option, not
the default): the crops, plus an exponential moving average of the weights (decay 0.99) evaluated and kept,
stopping at no 0.02 dB gain in 100 steps with a 100-step decay. Everything else is the package's defaults, so
the sampled patches, the PSF estimate and the validation pairs are the same in every row of a case.

Cases:
- ``axons``: the semi-real light-sheet axon case ``axons-sd3-x3`` of benchmarks/semireal.py (truth known);
- ``beads``: the real confocal beads (../shared/data/confocal_beads_mpicbg, no truth: the median axial /
  lateral bead FWHM after restoration, as benchmarks/beads_real.py);
- ``tissue``: a tissue phantom of :mod:`ssai3d_dask.evaluation.simulate` (96 x 128 x 128 truth, z blur sd 3 px,
  every 3rd plane, 100 photons; truth known).

Each row: adaptation wall time (sampling to the written folder), the steps and what stopped them, the validation
PSNR before and after, and the restoration (``ssai3d restore`` defaults, float32) scored against the truth (PSNR
and SSIM after a least-squares intensity match) or by the beads' FWHM ratio. Runs one at a time.

Run: python benchmarks/adaptation_time.py [--cases axons,beads,tissue] [--variants former,current]
Rows are merged into benchmarks/results/adaptation_time.json by (case, variant); the .md is rewritten.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from beads_real import per_bead_fwhm  # noqa: E402
from semireal import CASES, make_case, scores  # noqa: E402

from ssai3d_dask.adaptation.adapt import adapt  # noqa: E402
from ssai3d_dask.evaluation.metrics import find_beads  # noqa: E402
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate  # noqa: E402
from ssai3d_dask.io.volume import Volume, open_volume  # noqa: E402
from ssai3d_dask.restoration.pipeline import restore  # noqa: E402
from ssai3d_dask.settings import AdaptSettings, FinetuneSettings, RestoreSettings  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BEADS = Path(__file__).resolve().parents[2] / "shared" / "data" / "confocal_beads_mpicbg" / "Bead_Image1_crop.tif"
VARIANTS = {
    "former": FinetuneSettings(crop_px=0),
    "current": FinetuneSettings(),
    "fast": FinetuneSettings(ema=0.99, patience=100, min_gain_db=0.02, cooldown=100),
}


def load_case(name: str) -> tuple[Volume, np.ndarray | None]:
    """The input volume and its truth on the output grid (None for the beads)."""
    if name == "axons":
        spec = CASES["axons-sd3-x3"]
        truth, raw = make_case(spec, 0)
        return Volume.from_array(raw, (float(spec["step"]), 1.0, 1.0), chunks=(16, 64, 64), source="axons"), truth
    if name == "tissue":
        sim = simulate("tissue", (96, 128, 128), seed=0, model=ForwardModel(0.5, 3.0, z_factor=3, photons=100.0))
        dz, dy, dx = sim.voxel_size_um  # the truth's grid; the raw stack keeps every 3rd plane
        return Volume.from_array(sim.raw.astype(np.float32), (dz * sim.model.z_factor, dy, dx), chunks=(16, 64, 64),
                                 source="tissue"), sim.truth.astype(np.float32)
    if name == "beads":
        return open_volume(BEADS), None
    raise SystemExit(f"unknown case {name!r}")


def score(pred: np.ndarray, truth: np.ndarray | None, out: Path) -> dict:
    """Against the truth: semireal.py's scores (PSNR and SSIM after a least-squares match, band errors, Fourier
    resolution). The beads: the median axial over lateral FWHM of the beads found in the restoration."""
    if truth is not None:
        return scores(pred[: truth.shape[0]], truth)
    fw = per_bead_fwhm(pred, find_beads(pred, min_distance_px=12, threshold_rel=0.3, border_px=12),
                       open_volume(out).voxel_size_um)
    z, x = float(np.median(fw["z"])), float(np.median(fw["x"]))
    return {"beads": len(fw["z"]), "fwhm_z_um": z, "fwhm_x_um": x, "fwhm_ratio": z / x}


def run_row(case: str, variant: str, work: Path) -> dict:
    vol, truth = load_case(case)
    model, out = work / f"{case}-{variant}.model", work / f"{case}-{variant}.ome.zarr"
    t0 = time.perf_counter()
    adapt(vol, model, AdaptSettings(finetune=VARIANTS[variant]), progress=False, overwrite=True)
    adapt_s = time.perf_counter() - t0
    h = json.loads((model / "manifest.json").read_text())["history"]
    t0 = time.perf_counter()
    restore(vol, model, out, RestoreSettings(dtype="float32", skip_empty=False), overwrite=True, progress=False)
    restore_s = time.perf_counter() - t0
    pred = np.asarray(open_volume(out).data.compute(), np.float32)
    return {"case": case, "variant": variant, "adapt_s": round(adapt_s, 1), "finetune_s": h["seconds"],
            "steps": h["steps"], "stopped_by": h["stopped_by"], "val_psnr_before": round(h["val_psnr_before"], 3),
            "val_psnr_after": round(h["val_psnr_after"], 3), "restore_s": round(restore_s, 1),
            "scores": score(pred, truth, out), "curve": h.get("val_curve")}


def write_md(rows: list[dict], path: Path, meta: dict) -> None:
    lines = ["# Time to an adapted model: former and current fine-tuning defaults (benchmarks/adaptation_time.py)", "",
             f"Machine: {meta['machine']}, {meta['threads']} CPU threads, torch {meta['torch']}; each row run alone. "
             "Former: whole 96-px pairs. Current (the defaults): 64-px crops of the same pairs, whole pairs where "
             "a crop would not hold the blur. Both: stop at no 0.01 dB gain in 250 steps, 250-step decay. Fast "
             "(options `--ema 0.99 --patience 100 --min-gain-db 0.02 --cooldown 100`): the crops, a moving average "
             "of the weights evaluated and kept, stop at no 0.02 dB gain in 100 steps, 100-step decay. Same "
             "patches, PSF estimate and validation pairs in every row of a case.", "",
             "| case | variant | adapt s | fine-tuning s (steps, stopped by) | val PSNR dB before -> after | "
             "restoration | speed-up |", "|---|---|---|---|---|---|---|"]
    by = {(r["case"], r["variant"]): r for r in rows}
    for r in rows:
        s = r["scores"]
        res = (f"{s['psnr_db']:.2f} dB, SSIM {s['ssim']:.3f} vs truth" if "psnr_db" in s else
               f"axial/lateral FWHM {s['fwhm_ratio']:.2f} ({s['fwhm_z_um']:.3f}/{s['fwhm_x_um']:.3f} um, "
               f"{s['beads']} beads)")
        former = by.get((r["case"], "former"))
        speed = f"{former['adapt_s'] / r['adapt_s']:.2f}x" if former and r["variant"] != "former" else "-"
        if r.get("source"):
            res += f" ({r['source']})"
        lines.append(f"| {r['case']} | {r['variant']} | {r['adapt_s']:.0f} | {r['finetune_s']:.0f} ({r['steps']}, "
                     f"{r['stopped_by']}) | {r['val_psnr_before']:.2f} -> {r['val_psnr_after']:.2f} | {res} | {speed} |")
    old = path.read_text() if path.exists() else ""
    reading = old[old.index("## Reading"):] if "## Reading" in old else ""
    path.write_text("\n".join(lines) + "\n\n" + reading)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="axons,beads,tissue")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "adaptation_time.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = {"machine": platform.machine(), "threads": args.threads, "torch": torch.__version__}
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    with tempfile.TemporaryDirectory(prefix="ssai3d-adapt-time-") as tmp:
        for case in args.cases.split(","):
            for variant in args.variants.split(","):
                row = run_row(case, variant, Path(tmp))
                print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
                rows = [r for r in rows if (r["case"], r["variant"]) != (case, variant)] + [row]
                rows.sort(key=lambda r: (r["case"], list(VARIANTS).index(r["variant"])))
                args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
                write_md(rows, args.out.with_suffix(".md"), meta)


if __name__ == "__main__":
    main()
