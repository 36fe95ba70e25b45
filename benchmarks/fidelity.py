"""Fidelity against baselines on phantoms with ground truth (issue 6; DESIGN.md "Evaluation protocol").

Every method runs through the package's block pipeline (``ssai3d_dask.restoration.pipeline.restore``):

- interp      linear z interpolation (what the user has without restoration)
- rl          Richardson-Lucy with the true (nominal) PSF, 30 iterations
- care        CARE-style U-Net (1.96M parameters) trained from scratch on the stack's lateral planes blurred
              with the one true PSF (and subsampled like z)
- ssai3d-full SSAI-3D, every layer fine-tuned, with the 25-PSF bank (``--psf-bank wide``, the former default)
- ssai3d      SSAI-3D with the package's defaults (every layer fine-tuned, ``--psf-bank auto``: one PSF, the axial
              blur estimated from the stack times ``--psf-lean`` (1.15 since archive/fidelity_lean.md; 1.0 before), along z;
              until archive/fidelity_calibrated.md: snip's 10 % of layers and the paper's 25-PSF bank, widened only); the
              patches and fine-tuning steps are the size's (below)
- rl-est      Richardson-Lucy with the PSF *estimated* from the stack (``ssai3d info --psf``: the axial blur
              beyond the lateral one; what a user without a measured PSF would do), 30 iterations
- care-est    CARE trained with that estimated PSF
- cyclegan    OT-CycleGAN (Park et al. 2022), trained on the stack alone (no PSF), G run on 3D sub-volumes
- ssai3d-1psf SSAI-3D sparse with a one-PSF bank: the stack's estimated axial blur at angle 0 only (what CARE-est
              is given), to tell the cost of the 25-PSF bank's breadth from the cost of the network
- ssai3d-full-1psf  the same one-PSF bank with every layer fine-tuned
- ssai3d-z    SSAI-3D sparse, bank of five widths centred on the estimate (x0.6-1.4) along z only (angle 0)
- ssai3d-tilt SSAI-3D sparse, bank of the estimate's one width at the paper's five orientations
- ssai3d-true SSAI-3D with the package's defaults but given the true (nominal) PSF, as CARE and RL are: the true
              axial sd beyond the lateral one in place of the estimate (``--sigmas-px``; leaned by ``--psf-lean`` as the
              estimate is), along z (what the blind estimate costs)
- ssai3d-each (PSF mismatch only) SSAI-3D with default settings adapted on *each* test stack, as a user runs
              ``ssai3d run`` on every stack; the other learned columns adapt once on the sd-5 stack there

Experiments (paper Figs. 2-4, OT-CycleGAN's undersampling setting), all on a truth grid of 0.1 um voxels:
1. beads: restored axial FWHM (mean +- sd over beads) vs lateral and truth FWHM;
2. strands: MSE and SSIM (L = 65535) per XZ slice, as box statistics;
3. PSF mismatch: CARE trained once for axial sd 5 px, SSAI-3D adapted once (its PSF bank), RL with sd 5;
   tested on stacks of axial sd 3..8 px; RL-est and ssai3d-each (the blind columns) see each test stack;
4. spheres vs cylinders: lateral MSE on the stack's own synthesized lateral pairs vs axial MSE against truth;
5. tubes with a shift-variant rotated PSF, then with Poisson + Gaussian noise: SSIM;
6. tubes, axial blur sd 4 then z undersampling x2 and x4 (OT-CycleGAN's own setting): PSNR, MS-SSIM,
   SSIM of 15-slice MIPs of the axial cross-sections, axial FWHM mismatch of tubes.

Default sizes finish on 2 CPU cores in about 50 minutes (2955 s measured): truth 48 x 96 x 96 (beads 64 x 96 x 96), raw z
every 4 voxels unless said otherwise, SSAI-3D 150 fine-tuning steps, CARE 300 steps (both batch 8, 128
patches of 64 px). ``--size paper`` uses the paper's 300^3 cubes and 1000 / 3000 steps (a GPU job).

The ``ssai3d-auto`` column is SSAI-3D sparse with a bank centred on the axial blur estimated from the stack
itself (widths x0.6-1.4 of the estimate, :data:`~ssai3d_dask.adaptation.psf_estimate.AUTO_SPREAD`) instead of
the paper's fixed sd 3-7 px: the variant archive/fidelity_bank.md compared, which lost to the paper bank (the package's
``--psf-bank wide`` only ever widens it). The one-PSF, widths-only and orientations-only columns
(archive/fidelity_bank_network.md) showed the spread of widths, not the bank's centre, to be what cost: the package's
``--psf-bank auto`` is now the estimate alone, along z.
``--methods`` runs a subset of the columns (the others show "-"); the blind and OT-CycleGAN columns were
run that way into archive/fidelity_blind.md (same phantoms and seeds, so their numbers sit beside fidelity.md's).

Run: python benchmarks/fidelity.py [--size small|paper] [--only beads,strands,...] [--methods interp,rl,...]
Writes benchmarks/results/archive/fidelity_run.md (+ .json) and its panels _<experiment>.png (beside --out,
named after it); ``benchmarks/fidelity_table.py`` merges the current run of each column into
benchmarks/results/fidelity.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.settings import AdaptSettings
from ssai3d_dask.adaptation.care import train_care
from ssai3d_dask.adaptation.cyclegan import train_cyclegan
from ssai3d_dask.adaptation.psf_estimate import AUTO_SPREAD, estimate_axial_blur
from ssai3d_dask.settings import CycleGANSettings
from ssai3d_dask.settings import CareSettings
from ssai3d_dask.models.folder import cached_folder
from ssai3d_dask.settings import FinetuneSettings
from ssai3d_dask.evaluation.metrics import bead_fwhm, find_beads, ms_ssim, psnr, ssim, tube_fwhm_mismatch
from ssai3d_dask.adaptation.pairs import PairSynthesizer
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.adaptation.psf import PSFBank
from ssai3d_dask.restoration.kernels import apply_network
from ssai3d_dask.adaptation.sampling import sample_lateral_patches, volume_statistics
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume, open_volume

RESULTS = Path(__file__).parent / "results"
ALL_METHODS = ("interp", "rl", "care", "ssai3d-full", "ssai3d", "ssai3d-auto", "ssai3d-1psf", "ssai3d-full-1psf",
               "ssai3d-z", "ssai3d-tilt", "ssai3d-true", "rl-est", "care-est", "cyclegan", "ssai3d-each")
#: Columns only the PSF-mismatch experiment has (elsewhere every learned column adapts on its test stack).
MISMATCH_ONLY = ("ssai3d-each",)
METHODS = ALL_METHODS  # the columns of this run (--methods)
PANEL_PREFIX = RESULTS / "fidelity"  # the figures go beside --out, named after it
LABELS = {"interp": "linear interp.", "rl": "Richardson-Lucy", "care": "CARE (scratch)",
          "ssai3d-full": "SSAI-3D full FT, 25-PSF bank", "ssai3d": "SSAI-3D (defaults)",
          "ssai3d-auto": "SSAI-3D sparse, auto bank", "ssai3d-1psf": "SSAI-3D sparse, one PSF (estimate)",
          "ssai3d-full-1psf": "SSAI-3D full FT, one PSF (estimate)",
          "ssai3d-z": "SSAI-3D sparse, 5 widths (estimate) along z",
          "ssai3d-tilt": "SSAI-3D sparse, 1 width x 5 angles", "ssai3d-true": "SSAI-3D (defaults), true PSF",
          "rl-est": "RL, estimated PSF",
          "care-est": "CARE, estimated PSF", "cyclegan": "OT-CycleGAN",
          "ssai3d-each": "SSAI-3D, adapted per stack"}
#: The columns whose bank is built on the stack's estimate: widths as multiples of it, and the orientations (None:
#: the paper's five). ssai3d-auto: centred on it (not the package's widen-only ``wide``); -1psf: CARE-est's one PSF,
#: along z; -z: the widths spread around it, along z; -tilt: its one width at the paper's orientations.
ESTIMATE_BANKS = {"ssai3d-auto": (AUTO_SPREAD, None), "ssai3d-1psf": ((1.0,), (0.0,)),
                  "ssai3d-full-1psf": ((1.0,), (0.0,)), "ssai3d-z": (AUTO_SPREAD, (0.0,)),
                  "ssai3d-tilt": ((1.0,), None)}
#: The restore method each column runs.
RESTORE_METHOD = {"rl-est": "rl", "care-est": "care"} | {m: "ssai3d" for m in ALL_METHODS if m.startswith("ssai3d-")}
SIZES = {
    "tiny": {"shape": (32, 64, 64), "beads_shape": (48, 64, 64), "n_beads": 6, "ft_steps": 3, "care_steps": 3,
             "patches": 16, "patch_px": 32, "halo": 16, "gan_steps": 3, "gan_volume": 16},  # a smoke run (minutes)
    "small": {"shape": (48, 96, 96), "beads_shape": (64, 96, 96), "n_beads": 16, "ft_steps": 150,
              "care_steps": 300, "patches": 128, "patch_px": 64, "halo": 32, "gan_steps": 300, "gan_volume": 32},
    "paper": {"shape": (300, 300, 300), "beads_shape": (300, 300, 300), "n_beads": 50, "ft_steps": 1000,
              "care_steps": 3000, "patches": 512, "patch_px": 96, "halo": 64, "gan_steps": 20000, "gan_volume": 64},
}
L16 = 65535.0


class Runner:
    """Trains and applies every method on one simulated stack through the block pipeline."""

    def __init__(self, cfg: dict, work: Path) -> None:
        self.cfg, self.work = cfg, work
        self.timings: dict[str, dict[str, float]] = {}
        self.estimates: dict[str, float] = {}

    def estimated_sigma_px(self, vol: Volume, name: str) -> float:
        """The stack's axial blur beyond the lateral one (px on the isotropic grid), estimated once per stack."""
        if name not in self.estimates:
            t = time.perf_counter()
            self.estimates[name] = estimate_axial_blur(vol, volume_statistics(vol, 0)).sigma_px
            self.timings.setdefault(name, {})["psf estimate s"] = round(time.perf_counter() - t, 1)
        return self.estimates[name]

    def estimated_psf_um(self, vol: Volume, name: str) -> tuple[float, float, float]:
        """The PSF a blind user would give RL and CARE: the estimated axial blur (beyond the lateral one)
        as the z sd, and the smallest lateral sd (the lateral planes are taken as they are)."""
        dx, lat = vol.voxel_size_um[2], 0.3
        return (math.hypot(self.estimated_sigma_px(vol, name), lat) * dx, lat * dx, lat * dx)

    def volume(self, sim, name: str) -> Volume:
        z = sim.raw.shape[0]
        return Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(min(z, 8), 48, 48), source=f"phantom:{name}")

    def train(self, vol: Volume, method: str, psf_sigma_um, name: str) -> Path | None:
        """Train (CARE) or adapt (SSAI-3D) on ``vol``; returns the model folder (None for rl/interp)."""
        if method in ("interp", "rl", "rl-est"):
            return None
        out = self.work / f"{name}-{method}.model"
        t = time.perf_counter()
        if method == "care-est":
            psf_sigma_um = self.estimated_psf_um(vol, name)
            t = time.perf_counter()
        if method == "cyclegan":
            train_cyclegan(vol, out, CycleGANSettings(iterations=self.cfg["gan_steps"],
                                                      volume_px=self.cfg["gan_volume"], seed=self.cfg["train_seed"]),
                           progress=False, overwrite=True)
        elif method in ("care", "care-est"):
            # care_steps "default": CARE's own budget (1000 steps of 16 pairs), as a user runs train-care
            budget = ({} if self.cfg["care_steps"] == "default"
                      else {"iterations": self.cfg["care_steps"], "batch_size": 8})
            train_care(vol, out, CareSettings(psf_sigma_um=tuple(psf_sigma_um), n_patches=self.cfg["patches"],
                                              patch_px=self.cfg["patch_px"], seed=self.cfg["train_seed"], **budget),
                       progress=False, overwrite=True)
        else:
            full = method in ("ssai3d-full", "ssai3d-full-1psf")
            bank = {}
            if method in ESTIMATE_BANKS:  # a fixed bank built on the stack's estimate (timed apart from training)
                spread, angles = ESTIMATE_BANKS[method]
                sd = self.estimated_sigma_px(vol, name)
                bank = {"sigmas_px": tuple(round(max(0.5, sd * k), 3) for k in spread)}
                if angles is not None:
                    bank["angles_deg"] = angles
                t = time.perf_counter()
            elif method == "ssai3d-true":  # the PSF CARE and RL are given, as the extra axial sd on the lateral grid
                z_um, _, x_um = psf_sigma_um  # (--psf-bank auto takes it in place of the estimate, leaned as it is)
                bank = {"sigmas_px": (round(math.sqrt(max(z_um ** 2 - x_um ** 2, 0.0)) / vol.voxel_size_um[2], 3),)}
            # the package's defaults (layer selection, --psf-bank auto) but for the benchmark's patches and steps
            # the "sparse" variants keep the former default: normalised snip's 10 % of layers
            choice = ({"selection": "all", "layers_fraction": 1.0} if full
                      else {} if method in ("ssai3d", "ssai3d-each", "ssai3d-true") else {"selection": "snip", "layers_fraction": 0.1})
            if bank and method != "ssai3d-true":
                choice["psf_bank"] = "paper"
            elif method == "ssai3d-full":  # the former default bank (the paper's, widened only)
                choice["psf_bank"] = "wide"
            adapt(vol, out, AdaptSettings(n_patches=self.cfg["patches"], patch_px=self.cfg["patch_px"], **bank,
                                          **choice, finetune=self.finetune_settings(), seed=self.cfg["train_seed"]),
                  progress=False, overwrite=True)
        self.timings.setdefault(name, {})[f"{method} train s"] = round(time.perf_counter() - t, 1)
        if method.startswith("ssai3d"):
            h = json.loads((out / "manifest.json").read_text())["history"]
            self.timings[name][f"{method} steps"] = f"{h['steps']} ({h['stopped_by']})"
        return out

    def finetune_settings(self) -> FinetuneSettings:
        steps = self.cfg["ft_steps"]
        if isinstance(steps, int):
            return FinetuneSettings(iterations=steps, batch_size=8)
        return FinetuneSettings(batch_size=8)  # the package's default budget (patience)

    def apply(self, vol: Volume, method: str, model_dir: Path | None, psf_sigma_um, name: str) -> np.ndarray:
        out = self.work / f"{name}-{method}.ome.zarr"
        zo = int(round(vol.shape[0] * vol.anisotropy))
        region = (-(-zo // 16) * 16, *(-(-s // 48) * 48 for s in vol.shape[1:]))
        if method == "rl-est":
            psf_sigma_um = self.estimated_psf_um(vol, name)
        name_r = RESTORE_METHOD.get(method, method)
        s = RestoreSettings(method=name_r, chunks=(16, 48, 48), region=region,
                            halo=None if name_r == "cyclegan" else self.cfg["halo"], dtype="float32", skip_empty=False,
                            psf_sigma_um=tuple(psf_sigma_um) if name_r == "rl" else None)
        t = time.perf_counter()
        restore(vol, model_dir, out, s, overwrite=True, progress=False)
        self.timings.setdefault(name, {})[f"{method} restore s"] = round(time.perf_counter() - t, 1)
        return np.asarray(open_volume(out).data.compute(), np.float32)

    def all_methods(self, sim, name: str, psf_sigma_um) -> dict[str, np.ndarray]:
        vol = self.volume(sim, name)
        preds = {}
        for m in (m for m in METHODS if m not in MISMATCH_ONLY):
            preds[m] = self.apply(vol, m, self.train(vol, m, psf_sigma_um, name), psf_sigma_um, name)
            print(f"  {name}: {m} done", flush=True)
        return preds


def true_psf_um(fm: ForwardModel, voxel_um: float = 0.1) -> tuple[float, float, float]:
    return (fm.sigma_axial_px * voxel_um, fm.sigma_lateral_px * voxel_um, fm.sigma_lateral_px * voxel_um)


def xz_slice_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSE and SSIM per XZ slice at 16-bit scale (L = 65535)."""
    p, t = np.clip(pred, 0, 1) * L16, truth * L16
    mse = np.array([np.mean((p[:, y] - t[:, y]) ** 2) for y in range(t.shape[1])])
    ss = np.array([structural_similarity(t[:, y], p[:, y], data_range=L16) for y in range(t.shape[1])])
    return mse, ss


def box(v: np.ndarray, fmt: str) -> str:
    q = np.percentile(v, [0, 25, 50, 75, 100])
    return f"{fmt.format(q[2])} [{fmt.format(q[1])}, {fmt.format(q[3])}] ({fmt.format(q[0])}-{fmt.format(q[4])})"


def table(title: str, rows: dict[str, dict[str, str]], cols=None, extra: str = "") -> list[str]:
    cols = [c for c in (cols or [m for m in ALL_METHODS if m not in MISMATCH_ONLY]) if c in METHODS]
    head = "| metric | " + " | ".join(LABELS.get(c, c) for c in cols) + " |"
    lines = [f"## {title}", "", head, "|---" * (len(cols) + 1) + "|"]
    for metric, vals in rows.items():
        lines.append(f"| {metric} | " + " | ".join(vals.get(c, "-") for c in cols) + " |")
    return lines + ([""] + [extra] if extra else []) + [""]


def panel(name: str, truth: np.ndarray, preds: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("truth", truth)] + [(LABELS[m], preds[m]) for m in METHODS if m in preds]
    z, y, x = (s // 2 for s in truth.shape)
    fig, axes = plt.subplots(3, len(cols), figsize=(2.1 * len(cols), 6.0), squeeze=False)
    vmax = float(np.percentile(truth, 99.9)) or 1.0
    for j, (label, v) in enumerate(cols):
        for i, (img, view) in enumerate(((v[z], "XY"), (v[:, y], "XZ"), (v[:, :, x], "YZ"))):
            axes[i, j].imshow(img, cmap="magma", vmin=0, vmax=vmax, aspect="equal")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(view)
        axes[0, j].set_title(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{PANEL_PREFIX}_{name}.png", dpi=60)
    plt.close(fig)


def exp_beads(r: Runner, cfg: dict, out: dict) -> list[str]:
    fm = ForwardModel(2.0 / 2.355, 7.0 / 2.355, z_factor=4)  # 200 nm lateral, 700 nm axial FWHM at 100 nm voxels
    sim = simulate("beads", cfg["beads_shape"], seed=11, model=fm, n_beads=cfg["n_beads"])
    preds = r.all_methods(sim, "beads", true_psf_um(fm))
    pos = find_beads(sim.truth)
    vox = (0.1, 0.1, 0.1)
    truth_fw = bead_fwhm(sim.truth, vox, pos)
    rows: dict[str, dict[str, str]] = {"axial FWHM (nm)": {}, "lateral FWHM (nm)": {}, "beads fitted": {}}
    res = {"truth": truth_fw}
    for m, p in preds.items():
        fw = bead_fwhm(p, vox, pos)
        res[m] = fw
        rows["axial FWHM (nm)"][m] = f"{1000 * fw['z']['mean_um']:.1f} +- {1000 * fw['z']['sd_um']:.1f}"
        rows["lateral FWHM (nm)"][m] = f"{1000 * fw['x']['mean_um']:.1f} +- {1000 * fw['x']['sd_um']:.1f}"
        rows["beads fitted"][m] = str(fw["z"]["n"])
    out["beads"] = res
    panel("beads", sim.truth, preds)
    extra = (f"Truth beads: axial {1000 * truth_fw['z']['mean_um']:.1f} nm, lateral {1000 * truth_fw['x']['mean_um']:.1f} "
             f"nm FWHM ({len(pos)} beads, sd 2 px); PSF 200 nm lateral / 700 nm axial FWHM; raw z step 400 nm. "
             "Paper (300^3, 50 beads): SSAI-3D 200.7 +- 2.9 nm, CARE 201.4 +- 2.7 nm axial FWHM.")
    return table("1. Beads (Fig. 2a/c): FWHM after restoration", rows, extra=extra)


def exp_strands(r: Runner, cfg: dict, out: dict) -> list[str]:
    fm = ForwardModel(0.5, 4.0, z_factor=4)
    sim = simulate("strands", cfg["shape"], seed=12, model=fm)
    preds = r.all_methods(sim, "strands", true_psf_um(fm))
    rows: dict[str, dict[str, str]] = {"MSE per XZ slice, median [IQR] (range)": {},
                                       "SSIM per XZ slice, median [IQR] (range)": {}, "mean SSIM": {}}
    out["strands"] = {}
    for m, p in preds.items():
        mse, ss = xz_slice_scores(p, sim.truth)
        rows["MSE per XZ slice, median [IQR] (range)"][m] = box(mse / 1e6, "{:.1f}") + " x1e6"
        rows["SSIM per XZ slice, median [IQR] (range)"][m] = box(ss, "{:.3f}")
        rows["mean SSIM"][m] = f"{ss.mean():.4f}"
        out["strands"][m] = {"mse": mse.tolist(), "ssim": ss.tolist()}
    panel("strands", sim.truth, preds)
    return table("2. Directional strands (Fig. 2b): PSF sd 0.5 / 4.0 px, raw z every 4 voxels", rows)


def exp_mismatch(r: Runner, cfg: dict, out: dict) -> list[str]:
    sims = {sd: simulate("strands", cfg["shape"], seed=13, model=ForwardModel(0.5, float(sd), z_factor=4))
            for sd in (3, 4, 5, 6, 7, 8)}
    train_psf = (0.5, 0.05, 0.05)
    vol5 = r.volume(sims[5], "mismatch-sd5")
    cols = [m for m in ALL_METHODS if m != "ssai3d-full" and m in METHODS]
    models = {m: r.train(vol5, m, train_psf, "mismatch") for m in cols if m not in MISMATCH_ONLY}
    rows: dict[str, dict[str, str]] = {}
    out["mismatch"] = {}
    for sd, sim in sims.items():
        vol = r.volume(sim, f"mismatch-sd{sd}")
        key = f"PSNR (dB), test axial sd {sd} px"
        rows[key], out["mismatch"][sd] = {}, {}
        for m in cols:
            model = models.get(m)
            if m == "ssai3d-each":  # a blind user adapts on the stack they restore
                model = r.train(vol, m, train_psf, f"mismatch-sd{sd}")
            p = r.apply(vol, m, model, train_psf, f"mismatch-sd{sd}")
            v = psnr(np.clip(p, 0, 1), sim.truth, 1.0)
            rows[key][m] = f"{v:.2f}"
            out["mismatch"][sd][m] = v
        print(f"  mismatch sd {sd} done", flush=True)
    return table("3. PSF mismatch (Fig. 2i/j): strands; CARE trained for axial sd 5 px, RL given sd 5, "
                 "SSAI-3D adapted once on the sd-5 stack with its defaults (--psf-bank auto: that stack's estimate "
                 "x --psf-lean, along z); CARE-est and OT-CycleGAN trained once on the sd-5 stack, RL-est given "
                 "each test stack's own estimate, SSAI-3D per stack adapted on each test stack with default settings", rows, cols)


def lateral_mse(model_dir: Path, vol: Volume, fm: ForwardModel, cfg: dict) -> float:
    """MSE on the stack's own lateral planes blurred with the true axial PSF (the training domain)."""
    adapted = cached_folder(model_dir)
    norm = volume_statistics(vol, 5)
    patches = sample_lateral_patches(vol, 32, cfg["patch_px"], norm, seed=99).patches
    sd = math.sqrt(fm.sigma_axial_px**2 - fm.sigma_lateral_px**2)
    synth = PairSynthesizer(PSFBank((sd,), (0.0,), 0.3), fm.z_factor)
    blurred, sharp = synth(torch.from_numpy(patches[:, None]), np.random.default_rng(5))
    model = adapted.model.eval()
    with torch.no_grad():
        pred = apply_network(model, blurred)
    return float(((pred - sharp) ** 2).mean()) * L16**2


def exp_similarity(r: Runner, cfg: dict, out: dict) -> list[str]:
    lines: list[str] = []
    out["similarity"] = {}
    for kind in ("spheres", "cylinders"):
        fm = ForwardModel(0.5, 4.0, z_factor=4)
        sim = simulate(kind, cfg["shape"], seed=14, model=fm)
        preds = r.all_methods(sim, kind, true_psf_um(fm))
        vol = r.volume(sim, kind)
        rows: dict[str, dict[str, str]] = {"lateral MSE (x1e6, L=65535)": {}, "axial MSE (x1e6, L=65535)": {},
                                           "PSNR (dB)": {}}
        out["similarity"][kind] = {}
        for m, p in preds.items():
            ax = float(np.mean((np.clip(p, 0, 1) * L16 - sim.truth * L16) ** 2))
            lat = lateral_mse(r.work / f"{kind}-{m}.model", vol, fm, cfg) \
                if m == "care" or m == "care-est" or m.startswith("ssai3d") else None
            rows["axial MSE (x1e6, L=65535)"][m] = f"{ax / 1e6:.1f}"
            rows["lateral MSE (x1e6, L=65535)"][m] = "-" if lat is None else f"{lat / 1e6:.1f}"
            rows["PSNR (dB)"][m] = f"{psnr(np.clip(p, 0, 1), sim.truth, 1.0):.2f}"
            out["similarity"][kind][m] = {"axial_mse": ax, "lateral_mse": lat}
        panel(kind, sim.truth, preds)
        similarity = "high" if kind == "spheres" else "low"
        lines += table(f"4. {kind} ({similarity} lateral-axial similarity, Fig. 3)", rows,
                       extra="Lateral MSE: the network on 32 of the stack's own lateral patches blurred with the "
                             "true axial PSF (the training domain); axial MSE: the restored volume against truth.")
    return lines


def exp_tubes(r: Runner, cfg: dict, out: dict) -> list[str]:
    rows: dict[str, dict[str, str]] = {}
    out["tubes"] = {}
    for label, fm in (("shift-variant rotated PSF", ForwardModel(0.5, 4.0, z_factor=4, shift_variant=True)),
                      ("+ Poisson (100 photons) + Gaussian (0.01) noise",
                       ForwardModel(0.5, 4.0, z_factor=4, shift_variant=True, photons=100, read_noise=0.01))):
        sim = simulate("tubes", cfg["shape"], seed=15, model=fm)
        name = "tubes-noise" if fm.photons else "tubes"
        preds = r.all_methods(sim, name, true_psf_um(fm))
        rows[f"SSIM, {label}"] = {m: f"{ssim(np.clip(p, 0, 1), sim.truth, 1.0):.4f}" for m, p in preds.items()}
        rows[f"PSNR (dB), {label}"] = {m: f"{psnr(np.clip(p, 0, 1), sim.truth, 1.0):.2f}" for m, p in preds.items()}
        out["tubes"][name] = {m: ssim(np.clip(p, 0, 1), sim.truth, 1.0) for m, p in preds.items()}
        panel(name, sim.truth, preds)
    return table("5. Tubes, shift-variant rotated PSF (axial sd x0.7-1.3, tilt -20..20 deg across x), Fig. 4d-g. "
                 "RL and CARE get the nominal PSF (sd 0.5 / 4 px)", rows)


def exp_undersampling(r: Runner, cfg: dict, out: dict) -> list[str]:
    rows: dict[str, dict[str, str]] = {}
    out["undersampling"] = {}
    for f in (2, 4):
        fm = ForwardModel(0.5, 4.0, z_factor=f)
        sim = simulate("tubes", cfg["shape"], seed=16, model=fm)
        preds = r.all_methods(sim, f"under-x{f}", true_psf_um(fm))
        rows[f"PSNR (dB), x{f}"] = {m: f"{psnr(np.clip(p, 0, 1), sim.truth, 1.0):.2f}" for m, p in preds.items()}
        rows[f"MS-SSIM, x{f}"] = {m: f"{ms_ssim(np.clip(p, 0, 1), sim.truth, 1.0):.4f}" for m, p in preds.items()}
        mip = {m: mip_ssim(np.clip(p, 0, 1), sim.truth) for m, p in preds.items()}
        rows[f"SSIM of 15-slice axial MIPs, median [IQR] (range), x{f}"] = {m: box(v, "{:.3f}") for m, v in mip.items()}
        fw = {m: tube_fwhm_mismatch(np.clip(p, 0, 1), sim.truth) * 100 for m, p in preds.items()}  # 100 nm voxels
        rows[f"axial FWHM mismatch of tubes (nm), median [IQR] (n), x{f}"] = {
            m: (box(v, "{:.0f}").split(" (")[0] + f" ({len(v)})") if len(v) else "-" for m, v in fw.items()}
        out["undersampling"][f] = {m: {"psnr": psnr(np.clip(p, 0, 1), sim.truth, 1.0), "mip_ssim": mip[m].tolist(),
                                       "fwhm_mismatch_nm": fw[m].tolist()} for m, p in preds.items()}
        if f == 4:
            panel("undersampling_x4", sim.truth, preds)
    return table("6. Axial blur sd 4 px, then z undersampling x2 / x4 (OT-CycleGAN setting), tubes", rows,
                 extra="MIPs: maximum projections over 15 adjacent XZ (and YZ) slices, non-overlapping, as the "
                       "OT-CycleGAN paper's Fig. 1g; FWHM mismatch: |axial FWHM restored - truth| from Gaussian fits "
                       "of z profiles through tube centre points of the truth (Fig. 1h).")


def mip_ssim(pred: np.ndarray, truth: np.ndarray, depth: int = 15) -> np.ndarray:
    """SSIM of maximum projections over ``depth`` adjacent axial slices (XZ along y, YZ along x)."""
    out = []
    for axis in (1, 2):
        for i in range(0, truth.shape[axis] - depth + 1, depth):
            sl = [slice(None)] * 3
            sl[axis] = slice(i, i + depth)
            t, p = truth[tuple(sl)].max(axis), pred[tuple(sl)].max(axis)
            out.append(structural_similarity(t, p, data_range=1.0))
    return np.asarray(out)


EXPERIMENTS = {"beads": exp_beads, "strands": exp_strands, "mismatch": exp_mismatch, "similarity": exp_similarity,
               "tubes": exp_tubes, "undersampling": exp_undersampling}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--only", default=",".join(EXPERIMENTS), help="comma list of experiments")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma list of columns to run")
    ap.add_argument("--ft-steps", type=int, default=None,
                    help="SSAI-3D fine-tuning steps (default: the size's; 0: the package's default budget, "
                         "patience on the validation PSNR)")
    ap.add_argument("--care-steps", type=int, default=None,
                    help="CARE training steps (default: the size's, 300 of 8 pairs at small; 0: CARE's own default, "
                         "1000 steps of 16 pairs)")
    ap.add_argument("--train-seed", type=int, default=0,
                    help="seed of every learned method's sampling and training (the phantoms keep theirs): run "
                         "1, 2, ... to see how far a figure moves between trainings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "archive" / "fidelity_run.md",
                    help="the run's table (results/fidelity.md is the merged one: benchmarks/fidelity_table.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dict(SIZES[args.size], train_seed=args.train_seed)
    if args.ft_steps is not None:
        cfg["ft_steps"] = args.ft_steps or "default budget"
    if args.care_steps is not None:
        cfg["care_steps"] = args.care_steps or "default"
    global METHODS, PANEL_PREFIX
    PANEL_PREFIX = args.out.parent / args.out.stem
    METHODS = tuple(m for m in ALL_METHODS if m in args.methods.split(","))
    if set(args.methods.split(",")) - set(ALL_METHODS):
        ap.error(f"--methods: unknown {set(args.methods.split(',')) - set(ALL_METHODS)}; known: {ALL_METHODS}")
    work = Path(tempfile.mkdtemp(prefix="ssai3d-fidelity-"))
    r = Runner(cfg, work)
    results: dict = {}
    t0 = time.perf_counter()
    lines = [f"# Fidelity against baselines ({args.size} sizes)", "",
             f"Machine: {platform.machine()}, {args.threads} CPU threads, torch {torch.__version__}. "
             f"Command: `python benchmarks/fidelity.py --size {args.size} --methods {','.join(METHODS)}"
             + (f" --ft-steps {args.ft_steps}" if args.ft_steps is not None else "")
             + (f" --care-steps {args.care_steps}" if args.care_steps is not None else "")
             + (f" --train-seed {args.train_seed}" if args.train_seed else "")
             + (f" --only {args.only}`." if args.only != ",".join(EXPERIMENTS) else "`."),
             f"Settings: {json.dumps(cfg)}. Intensities: truth in [0, 1]; predictions clipped to [0, 1]; "
             "PSNR/SSIM with range 1, MSE at 16-bit scale (L = 65535).", ""]
    try:
        for name in args.only.split(","):
            t = time.perf_counter()
            print(f"experiment {name}", flush=True)
            lines += EXPERIMENTS[name](r, cfg, results)
            print("\n".join(lines[-12:]), flush=True)
            print(f"  {name}: {time.perf_counter() - t:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if r.estimates:
        lines += ["## Estimated axial blur (sd beyond the lateral blur, isotropic px)", "", "```",
                  json.dumps({k: round(v, 2) for k, v in r.estimates.items()}, indent=1), "```", ""]
    lines += ["## Timings (s, this machine)", "", "```", json.dumps(r.timings, indent=1), "```", "",
              f"Total: {time.perf_counter() - t0:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"results": results, "timings": r.timings}, indent=1,
                                                        default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
