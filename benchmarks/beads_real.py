"""Real confocal beads: axial against lateral bead FWHM after restoration (issue 12's evidence on real data).

Data: ../shared/data/confocal_beads_mpicbg/Bead_Image1_crop.tif (41 x 150 x 150, voxel 0.125 x 0.0225 x
0.0225 um, four sub-resolution beads; see its SOURCE.md). No isotropic truth exists: a sub-resolution bead
is the PSF, so a restoration that made the stack isotropic would give axial FWHM = lateral FWHM.

Methods, each through the package's pipeline on the isotropic grid (z resampled to 0.0225 um):
- interp      linear z interpolation;
- ssai3d      `ssai3d run --psf-bank paper` (the paper's fixed bank, sd 3-7 px);
- ssai3d-auto `ssai3d run` with default settings (`--psf-bank auto`: one PSF, the stack's own axial blur
              estimate, along z; every layer fine-tuned);
- ssai3d-wide `ssai3d run --psf-bank wide --selection snip` (the defaults until archive/fidelity_calibrated.md: the
              paper's bank widened to centre 1.25x past the estimate when that is wider than sd 5 px, snip's 10 %
              of layers);
- rl          Richardson-Lucy, 30 iterations, with the PSF *measured* from these beads (their crops in the
              interpolated stack, background-subtracted, centred on their peaks and averaged). A measured
              PSF from the same beads is the most favourable case RL can get.

FWHM: Gaussian fits of the z and x profiles through each bead's peak (found in the interpolated stack),
median over beads. Run: python benchmarks/beads_real.py  (about 10 minutes on 2 CPU cores).
Writes benchmarks/results/beads_real.md.
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

from ssai3d_dask.adaptation.psf_estimate import estimate_axial_blur
from ssai3d_dask.adaptation.sampling import volume_statistics
from ssai3d_dask.evaluation.metrics import bead_fwhm, find_beads
from ssai3d_dask.io.volume import open_volume
from ssai3d_dask.models.folder import load_folder
from ssai3d_dask.restoration.kernels import default_halo
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import AdaptSettings, RestoreSettings
from ssai3d_dask.workflow import run

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("interp", "rl", "ssai3d", "ssai3d-auto", "ssai3d-wide")
DATA = ROOT.parent / "shared" / "data" / "confocal_beads_mpicbg" / "Bead_Image1_crop.tif"
RESULTS = ROOT / "benchmarks" / "results"
HALF = (28, 10, 10)  # PSF crop half-size (z, y, x) on the isotropic grid: ~3 sd of the axial profile


def per_bead_fwhm(vol: np.ndarray, positions: np.ndarray, vox: tuple[float, float, float]) -> dict[str, list]:
    out: dict[str, list] = {"z": [], "x": []}
    for p in positions:
        fw = bead_fwhm(vol, vox, positions=p[None], half_window_px=40)
        for ax in out:
            out[ax].append(fw[ax]["mean_um"])
    return out


def measured_psf(interp: np.ndarray, positions: np.ndarray) -> np.ndarray:
    crops = []
    for p in positions:
        sl = tuple(slice(c - h, c + h + 1) for c, h in zip(p, HALF))
        if any(s.start < 0 or s.stop > n for s, n in zip(sl, interp.shape)):
            continue
        c = interp[sl].astype(np.float64)
        border = np.concatenate([c[0].ravel(), c[-1].ravel(), c[:, 0].ravel(), c[:, -1].ravel(),
                                 c[:, :, 0].ravel(), c[:, :, -1].ravel()])
        c = np.clip(c - np.median(border), 0, None)
        crops.append(c / c.sum())
    if not crops:
        raise SystemExit("no bead far enough from the border to measure the PSF")
    psf = np.mean(crops, 0)
    return (psf / psf.sum()).astype(np.float32)


def halo_of(model_dir: Path) -> int:
    """The halo `ssai3d run` used for this model folder (its recorded reach plus the denoiser's radius)."""
    adapted = load_folder(model_dir)
    return default_halo(adapted.model, adapted.denoiser)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "beads_real.md")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma list of rows to run (interp always runs: it locates the beads); "
                         f"default {','.join(METHODS)}")
    args = ap.parse_args()
    methods = set(args.methods.split(","))
    if methods - set(METHODS):
        ap.error(f"--methods: unknown {sorted(methods - set(METHODS))}; known: {','.join(METHODS)}")
    torch.set_num_threads(args.threads)
    vol = open_volume(args.data)
    work = Path(tempfile.mkdtemp(prefix="ssai3d-beads-"))
    t0 = time.perf_counter()
    times, preds, budget = {}, {}, {}
    est = estimate_axial_blur(vol, volume_statistics(vol))
    try:
        common = dict(dtype="float32", skip_empty=False)
        t = time.perf_counter()
        restore(vol, None, work / "interp.ome.zarr", RestoreSettings(method="interp", **common), progress=False)
        times["interp"] = time.perf_counter() - t
        preds["interp"] = np.asarray(open_volume(work / "interp.ome.zarr").data.compute(), np.float32)
        vox = open_volume(work / "interp.ome.zarr").voxel_size_um
        pos = find_beads(preds["interp"], min_distance_px=12, threshold_rel=0.3, border_px=12)
        psf = measured_psf(preds["interp"], pos)
        np.save(work / "psf.npy", psf)
        if "rl" in methods:
            t = time.perf_counter()
            restore(vol, None, work / "rl.ome.zarr", RestoreSettings(method="rl", psf_file=str(work / "psf.npy"),
                                                                    **common), progress=False)
            times["rl"] = time.perf_counter() - t
            preds["rl"] = np.asarray(open_volume(work / "rl.ome.zarr").data.compute(), np.float32)
        for name, extra in (("ssai3d", {"psf_bank": "paper"}), ("ssai3d-auto", {}),
                            ("ssai3d-wide", {"psf_bank": "wide", "selection": "snip"})):
            if name not in methods:
                continue
            t = time.perf_counter()
            run(vol, work / f"{name}.ome.zarr", work / f"{name}.model", AdaptSettings(**extra),
                RestoreSettings(**common), progress=False)
            times[name] = time.perf_counter() - t
            preds[name] = np.asarray(open_volume(work / f"{name}.ome.zarr").data.compute(), np.float32)
            man = json.loads((work / f"{name}.model" / "manifest.json").read_text())
            h, tm = man["history"], man["timings"]
            adapt_s = sum(v for v in tm.values() if isinstance(v, (int, float)))
            budget[name] = (f"{h['steps']} steps ({h['stopped_by']}), fine-tuning {h['seconds']:.0f} s, adapt in all "
                            f"{adapt_s:.0f} s, restore {times[name] - adapt_s:.0f} s (halo {halo_of(work / f'{name}.model')} px)")
            print(f"{name} done in {times[name]:.0f} s: {budget[name]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows, res = [], {}
    labels = {"ssai3d": "ssai3d (--psf-bank paper)", "ssai3d-auto": "ssai3d (defaults: --psf-bank auto)",
              "ssai3d-wide": "ssai3d (--psf-bank wide --selection snip: the former defaults)"}
    for name, v in preds.items():
        fw = per_bead_fwhm(v, pos, vox)
        z, x = np.nanmedian(fw["z"]), np.nanmedian(fw["x"])
        res[name] = {"axial_um": fw["z"], "lateral_um": fw["x"], "median_axial_um": z, "median_lateral_um": x,
                     "ratio": z / x, "seconds": round(times[name], 1)}
        rows.append(f"| {labels.get(name, name)} | {z:.3f} | {x:.3f} | {z / x:.2f} | {times[name]:.0f} |")
    command = "python benchmarks/beads_real.py" + (f" --methods {args.methods}" if methods != set(METHODS) else "")
    lines = ["# Real confocal beads: axial vs lateral FWHM", "",
             f"Machine: {platform.machine()}, {args.threads} CPU threads, torch {torch.__version__}. "
             f"Command: `{command}`. Data: {args.data.name} {tuple(vol.shape)}, voxel "
             f"{vol.voxel_size_um} um; {len(pos)} beads; output voxel {vox} um.",
             f"Estimated axial blur beyond the lateral (`ssai3d info --psf`): {est}.",
             "SSAI-3D: `ssai3d run` with the shipped base and the default adaptation budget (patience on the "
             "validation PSNR).",
             f"Measured PSF for RL: mean of the beads' background-subtracted crops {tuple(2 * h + 1 for h in HALF)} "
             "from the interpolated stack.", "",
             "| method | median axial FWHM (um) | median lateral FWHM (um) | axial / lateral | wall s |",
             "|---|---|---|---|---|", *rows, "",
             "Per bead (um): ```" + json.dumps({k: {"z": [round(a, 3) for a in v["axial_um"]],
                                                  "x": [round(a, 3) for a in v["lateral_um"]]}
                                              for k, v in res.items()}) + "```", "",
             "Where the SSAI-3D time went: " + "; ".join(f"{labels[k]}: {v}" for k, v in budget.items()) + ".", "",
             f"Total: {time.perf_counter() - t0:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"estimate": est.to_dict(), "results": res}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
