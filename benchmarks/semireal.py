"""Semi-real fidelity: real morphology with a known truth (issue 42; DESIGN.md "Evaluation protocol").

Phantoms sit in the network's comfort zone; real stacks have no truth. A semi-real case takes a crop of a
real stack from ``../shared/data`` and makes an isotropic, nearly noise-free truth of it: the lateral axes
are blurred to the stack's axial resolution (``iso_px``) and every axis is smoothed by ``smooth_px``. The
truth is turned so that a lateral axis (real lateral morphology) becomes z, then degraded with a known
forward model: a Gaussian blur along z (``sd_px``), every ``step``-th plane kept (z step = ``step`` x the
lateral pixel), Poisson noise at ``photons`` for the truth's 99.9th percentile. Every method restores the
raw stack through the package's block pipeline (``restore``) to the truth's grid.

Scores, against the truth after a least-squares intensity match (``a * pred + b``, as a user's contrast
setting would): PSNR (range of the truth), SSIM, the error above the truth's band (the error minus its 2 px
Gaussian blur: invented texture shows there first) and below it, each as a ratio to interpolation's, and
the Fourier resolution along z against x. The blind PSF estimate is reported against the true width.

Methods (``--methods``): interp; rl (the true PSF, at its best iteration count against the truth, so the
peer is at its strongest); care (trained with the true PSF, its own default budget); ssai3d (the package's
defaults); ssai3d-true (the defaults given the true axial width with ``--sigmas-px``); ssai3d-snip (the paper's
sparse fine-tuning: normalised snip's 10 % of layers); cyclegan (OT-CycleGAN, its default budget).

``../shared/data/cellseg3d_mesospim_nuclei`` is held out and never used here.

Run: python benchmarks/semireal.py [--cases axons-sd3-x3,...] [--methods interp,rl,ssai3d,...] [--out F.md]
Writes benchmarks/results/semireal.md + .json and one XZ panel per case (semireal_<case>.png). Each case and
method is run alone on the machine (2 CPU cores: minutes per adaptation); the JSON keeps earlier results
of cases and methods not rerun, so columns can be added one run at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy.ndimage import gaussian_filter

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.adaptation.care import train_care
from ssai3d_dask.adaptation.cyclegan import train_cyclegan
from ssai3d_dask.adaptation.psf_estimate import estimate_axial_blur
from ssai3d_dask.adaptation.sampling import volume_statistics
from ssai3d_dask.evaluation.metrics import fourier_resolution, ssim
from ssai3d_dask.io.volume import Volume, open_volume
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import AdaptSettings, CareSettings, CycleGANSettings, RestoreSettings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
HELD_OUT = "cellseg3d_mesospim_nuclei"
#: file, crop (z, y, x), lateral blur to the axial resolution (px), smoothing (px), forward model
CASES = {
    "axons-sd3-x3": dict(file="trailmap_lsfm_axons/trailmap_example_chunk.tif",
                         crop=((100, 196), (56, 248), (56, 248)), iso_px=2.5, smooth_px=1.0, sd_px=3.0, step=3,
                         photons=300),
    "axons-sd3-x3-bright": dict(file="trailmap_lsfm_axons/trailmap_example_chunk.tif",
                                crop=((100, 196), (56, 248), (56, 248)), iso_px=2.5, smooth_px=1.0, sd_px=3.0,
                                step=3, photons=3000),
    "axons-sd2-x2": dict(file="trailmap_lsfm_axons/trailmap_example_chunk.tif",
                         crop=((0, 96), (100, 292), (100, 292)), iso_px=2.5, smooth_px=1.0, sd_px=2.0, step=2,
                         photons=300),
    "embryo-sd3-x3": dict(file="qcanet_embryo_nuclei/16_cell_stage.tif", crop=((0, 51), (0, 120), (0, 120)),
                          iso_px=2.0, smooth_px=1.0, sd_px=3.0, step=3, photons=100),
    "stp-sd4-x4": dict(file="cellfinder_stp_cortex/signal_ch0.tif", crop=((0, 30), (100, 292), (200, 392)),
                       iso_px=2.0, smooth_px=1.0, sd_px=4.0, step=4, photons=300),
}
METHODS = ("interp", "rl", "care", "ssai3d", "ssai3d-true", "ssai3d-snip", "cyclegan")
RL_ITERATIONS = (1, 2, 3, 5, 8, 12, 20, 30, 50)


def make_case(spec: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(truth on the isotropic grid, raw stack with z step ``step``), both float32, z first."""
    if HELD_OUT in spec["file"]:
        raise SystemExit(f"{HELD_OUT} is held out of every benchmark")
    stack = tifffile.imread(DATA / spec["file"])
    crop = np.asarray(stack[tuple(slice(a, b) for a, b in spec["crop"])], np.float32)
    iso = gaussian_filter(crop, (0, spec["iso_px"], spec["iso_px"]))  # lateral blur up to the axial one
    truth = gaussian_filter(iso, spec["smooth_px"]).transpose(1, 0, 2)  # a lateral axis becomes z
    truth = np.ascontiguousarray(truth[: truth.shape[0] // spec["step"] * spec["step"]])
    blurred = gaussian_filter(truth, (spec["sd_px"], 0, 0))[:: spec["step"]]
    scale = spec["photons"] / max(float(np.percentile(truth, 99.9)), 1e-6)
    raw = np.random.default_rng(seed).poisson(np.clip(blurred, 0, None) * scale) / scale
    return truth, raw.astype(np.float32)


def matched(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``a * pred + b`` with the least-squares a, b against the truth."""
    a, b = np.polyfit(pred.ravel().astype(np.float64), truth.ravel().astype(np.float64), 1)
    return (a * pred + b).astype(np.float32)


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    p = matched(pred, truth)
    rng = float(truth.max() - truth.min())
    err = (p - truth).astype(np.float64)
    low = gaussian_filter(err, 2.0)
    res = fourier_resolution(p, (1.0, 1.0, 1.0))
    return {"psnr_db": float(10 * np.log10(rng ** 2 / np.mean(err ** 2))), "ssim": ssim(p, truth, rng),
            "high_band_mse": float(np.mean((err - low) ** 2)), "low_band_mse": float(np.mean(low ** 2)),
            "res_z_px": res["z"], "res_x_px": res["x"]}


def run_method(method: str, raw: np.ndarray, truth: np.ndarray, spec: dict, work: Path, seed: int) -> dict:
    step = spec["step"]
    vol = Volume.from_array(raw, (float(step), 1.0, 1.0), chunks=(min(16, raw.shape[0]), 64, 64),
                            source="semireal")
    true_um = (float(spec["sd_px"]), 0.3, 0.3)  # what degraded the truth: the z blur (a token lateral sd)
    out, model, extra = work / f"{method}.ome.zarr", None, {}
    t0 = time.perf_counter()
    if method in ("ssai3d", "ssai3d-true", "ssai3d-snip"):
        model = work / f"{method}.model"
        kw = {"seed": seed}
        if method == "ssai3d-true":
            kw["sigmas_px"] = (spec["sd_px"],)
        elif method == "ssai3d-snip":
            kw |= {"selection": "snip", "layers_fraction": 0.1}
        adapt(vol, model, AdaptSettings(**kw), progress=False, overwrite=True)
        man = json.loads((model / "manifest.json").read_text())
        h = man["history"]
        extra = {"steps": h["steps"], "stopped_by": h["stopped_by"], "val_psnr": h.get("val_psnr_after"),
                 "train_s": round(time.perf_counter() - t0, 1),
                 "psf_estimate_px": (man.get("psf_estimate") or {}).get("sigma_px"),
                 "trained_width_px": man["psf_bank"]["sigmas_px"], "axial_check": man.get("axial_check")}
    elif method == "care":
        model = work / "care.model"
        train_care(vol, model, CareSettings(psf_sigma_um=true_um, seed=seed), progress=False, overwrite=True)
        extra = {"train_s": round(time.perf_counter() - t0, 1)}
    elif method == "cyclegan":
        model = work / "cyclegan.model"
        train_cyclegan(vol, model, CycleGANSettings(seed=seed), progress=False, overwrite=True)
        extra = {"train_s": round(time.perf_counter() - t0, 1)}
    name = {"ssai3d-true": "ssai3d", "ssai3d-snip": "ssai3d"}.get(method, method)
    common = dict(dtype="float32", skip_empty=False, chunks=(16, 32, 32), region=(64, 128, 128))
    if method == "rl":  # its best iteration count against the truth
        best = None
        for it in RL_ITERATIONS:
            restore(vol, None, out, RestoreSettings(method="rl", psf_sigma_um=true_um, rl_iterations=it, **common),
                    overwrite=True, progress=False)
            pred = np.asarray(open_volume(out).data.compute(), np.float32)[: truth.shape[0]]
            s = scores(pred, truth)
            if best is None or s["psnr_db"] > best[0]["psnr_db"]:
                best = (s, pred, it)
        s, pred, it = best
        return {"scores": s, "pred": pred, "rl_iterations": it, "seconds": round(time.perf_counter() - t0, 1)}
    restore(vol, model, out, RestoreSettings(method=name, **common), overwrite=True, progress=False)
    pred = np.asarray(open_volume(out).data.compute(), np.float32)[: truth.shape[0]]
    return {"scores": scores(pred, truth), "pred": pred, "seconds": round(time.perf_counter() - t0, 1)} | extra


def panel(path: Path, truth: np.ndarray, preds: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = truth.shape[1] // 2
    rows = {"truth": truth} | {k: matched(v, truth) for k, v in preds.items()}
    lo, hi = np.percentile(truth, (0.5, 99.8))
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 2.0 * len(rows)))
    for ax, (k, v) in zip(np.atleast_1d(axes), rows.items()):
        ax.imshow(v[:, y, :], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(k, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_md(path: Path, record: dict) -> None:
    lines = ["# Semi-real fidelity (benchmarks/semireal.py)", "",
             f"Command: `{record['command']}`; {record['machine']}; torch {record['torch']}; seed {record['seed']}.",
             "Each row: PSNR (dB) / SSIM against the truth after a least-squares intensity match; high- and "
             "low-band error as a ratio to interpolation's (below 1: less error than interpolation); Fourier "
             "resolution z/x (px, truth's in the header). Rows are run one at a time, alone on the machine.", ""]
    for case, c in record["cases"].items():
        spec = CASES[case]
        lines += [f"## {case}", "",
                  f"`{spec['file']}` crop {spec['crop']}, lateral blur {spec['iso_px']} px, smoothing "
                  f"{spec['smooth_px']} px, turned (y -> z); z blur sd {spec['sd_px']} px, z step {spec['step']} px, "
                  f"{spec['photons']} photons at the 99.9th percentile. Truth {c['truth_shape']}, resolution "
                  f"z/x {c['truth_res'][0]:.2f}/{c['truth_res'][1]:.2f} px. Panel: `semireal_{case}.png`.", "",
                  "| method | PSNR dB | SSIM | high band / interp | low band / interp | res z/x px | notes |",
                  "|---|---|---|---|---|---|---|"]
        ref = c["methods"].get("interp", {}).get("scores")
        for m in METHODS:
            r = c["methods"].get(m)
            if r is None:
                continue
            s = r["scores"]
            hb = f"{s['high_band_mse'] / ref['high_band_mse']:.2f}" if ref else "-"
            lb = f"{s['low_band_mse'] / ref['low_band_mse']:.2f}" if ref else "-"
            notes = [f"{r['seconds']:.0f} s"]
            if "rl_iterations" in r:
                notes.append(f"best at {r['rl_iterations']} iterations")
            if "steps" in r:
                notes.append(f"{r['steps']} steps ({r['stopped_by']}), val {r['val_psnr']:.2f} dB")
            if r.get("psf_estimate_px") is not None:
                notes.append(f"estimate {r['psf_estimate_px']:.2f} px (true {spec['sd_px']}), trained on "
                             f"{r['trained_width_px']}")
            chk = r.get("axial_check") or {}
            if "z_over_lateral" in chk:
                notes.append(f"axial check z {chk['z_over_lateral']:.2f}, lateral {chk['lateral_over_input']:.2f} "
                             f"({'trusted' if chk['trusted'] else 'flagged'})")
            lines.append(f"| {m} | {s['psnr_db']:.2f} | {s['ssim']:.3f} | {hb} | {lb} | "
                         f"{s['res_z_px']:.2f}/{s['res_x_px']:.2f} | {'; '.join(notes)} |")
        lines.append("")
    lines += ["## Reading", "", record.get("reading", "(to be written after a run)"), ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "semireal.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    jpath = args.out.with_suffix(".json")
    record = json.loads(jpath.read_text()) if jpath.exists() else {"cases": {}}
    record |= {"command": shlex.join(["python", *sys.argv]), "machine": platform.processor() or platform.machine(),
               "torch": torch.__version__, "seed": args.seed}
    for case in args.cases.split(","):
        truth, raw = make_case(CASES[case], args.seed)
        res = fourier_resolution(truth, (1.0, 1.0, 1.0))
        c = record["cases"].setdefault(case, {"methods": {}})
        c |= {"truth_shape": list(truth.shape), "truth_res": [res["z"], res["x"]]}
        vol = Volume.from_array(raw, (float(CASES[case]["step"]), 1.0, 1.0))
        try:
            c["psf_estimate_px"] = estimate_axial_blur(vol, volume_statistics(vol, 0)).sigma_px
        except ValueError as exc:
            c["psf_estimate_px"] = str(exc)
        preds = {}
        with tempfile.TemporaryDirectory() as tmp:
            for m in args.methods.split(","):
                r = run_method(m, raw, truth, CASES[case], Path(tmp), args.seed)
                preds[m] = r.pop("pred")
                c["methods"][m] = r
                print(f"{case} {m}: {json.dumps(r['scores'])} {r['seconds']} s", flush=True)
                jpath.write_text(json.dumps(record, indent=1))
        panel(args.out.parent / f"semireal_{case}.png", truth, preds)
    jpath.write_text(json.dumps(record, indent=1))
    write_md(args.out, record)


if __name__ == "__main__":
    main()
