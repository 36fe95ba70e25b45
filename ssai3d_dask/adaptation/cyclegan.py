"""OT-CycleGAN (Park et al. 2022), the second seed system: ``ssai3d train-cyclegan``, ``--method cyclegan``.

Two 3D generators and two 2D discriminators learn, from one stack and without PSF or ground truth, the
maps between its anisotropic (low axial resolution) and isotropic manifolds:

- ``G`` (3D U-Net) super-resolves z: a sub-volume ``x`` of the stack, z already on the lateral grid with
  the pipeline's linear interpolation, to an isotropic-looking one;
- ``F`` (a smaller 3D U-Net) reverts it: it blurs and undersamples z like the microscope;
- ``D_Y`` (2D PatchGAN) tells axial (XZ, YZ) slices of ``G(x)`` from real lateral (XY) slices of the stack;
- ``D_X`` tells axial slices of ``F(y)`` from the stack's own axial slices.

The isotropic domain ``y`` (there is no isotropic volume) is sampled as sub-volumes of the same stack with
a lateral axis moved onto z (z swapped with y or with x): their slices through the new z and the other
lateral axis are real lateral planes, the planes on which ``D_X`` judges ``F``. Both cycles are then
defined, ``x -> G -> F -> x`` and ``y -> F -> G -> y``; their L1 distance is the transport cost of the
optimal-transport reading of the cycleGAN, weighted by ``cycle_weight`` (10, CycleGAN's weight) against
least-squares adversarial terms (LSGAN, as CycleGAN). Adam with beta1 0.5 and lr 2e-4 as CycleGAN; the
rate decays on a cosine instead of CycleGAN's linear tail. CycleGAN's 50-image history buffer is left
out: with a few slices per step from a fixed pool the discriminators see varied fakes already.

``D_X``/``D_Y`` see single slices, or maximum projections over ``mip`` adjacent slices (the paper's option
for sparse structures). Training runs on a pool of random sub-volumes read lazily (tissue-aware like the
lateral patches), flipped and transposed in y/x. A resume checkpoint (MODEL_DIR/resume.pt: networks,
optimisers, schedules, RNG states, history) is written every ``checkpoint_every`` steps; rerunning the
same command continues from it. MODEL_DIR keeps ``G`` only (``model.pt``); restoration runs it over
overlapping sub-volumes with a halo of its receptive radius (:func:`ssai3d_dask.restoration.kernels.run_volume`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import torch
import torch.nn.functional as F

from ssai3d_dask import __version__
from ssai3d_dask.adaptation.sampling import chunk_weights, keep_candidate, positions_in_chunks, volume_statistics
from ssai3d_dask.adaptation.training import make_optimizer
from ssai3d_dask.errors import SettingsError
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.io.files import write_with
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.progress import ProgressLike, as_progress
from ssai3d_dask.models.checkpoint import load_state_strict, read_state
from ssai3d_dask.models.folder import MANIFEST_FILE, AdaptedModel, check_new_folder, write_folder
from ssai3d_dask.models.manifest import InputRef, ModelManifest
from ssai3d_dask.models.nafnet import count_parameters
from ssai3d_dask.models.precision import as_input, autocast, prepare, resolve_precision
from ssai3d_dask.models.unet import PatchDiscriminator, UNet3D
from ssai3d_dask.ops.grid import chunk_bounds
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.ops.resample import resample_z_block
from ssai3d_dask.settings import CYCLEGAN_PRESETS, CycleGANSettings, resolve_device

logger = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
#: Output layers of the generators start at this fraction of PyTorch's default initialisation: close to
#: the identity (the residual U-Net's input), yet not exactly it, so the cycle terms start informative.
OUT_INIT_SCALE = 0.1
N_VALIDATION = 4


# --- the training pool ------------------------------------------------------------------------------

@dataclass
class SubVolumes:
    """Normalised isotropic-grid sub-volumes (n, S, S, S) float32 and their output-grid origins."""

    volumes: np.ndarray
    origins: np.ndarray
    candidates: int


#: Normalised sub-volumes are clipped to this range. Narrower than the lateral sampler's
#: :data:`~ssai3d_dask.adaptation.sampling.PATCH_RANGE` (which was widened for sparse bright beads): the
#: OT-CycleGAN baseline has not been re-measured with the wider range, so it keeps the one its results used.
SUBVOLUME_RANGE = (-0.5, 2.0)


def sample_subvolumes(vol: Volume, n: int, size: int, norm: Normalization, seed: int = 0,
                      foreground_floor: float = 0.1) -> SubVolumes:
    """``n`` random ``size``^3 sub-volumes on the isotropic grid, read lazily, foreground-aware.

    Each reads only the input planes its output planes interpolate from; z is resampled with the
    pipeline's function (:func:`ssai3d_dask.ops.resample.resample_z_block`) at the global plane indices,
    so the training data are exactly what restoration feeds the generator. Candidates whose mean
    normalised intensity is below half the foreground threshold are kept with probability
    ``foreground_floor`` only; positions are drawn tissue-aware as for lateral patches.
    """
    geom = isotropic_geometry(vol.shape, vol.voxel_size_um)
    f = geom.z_factor
    zo = geom.out_shape[0]
    zin, y, x = vol.shape
    if size > min(y, x) or size > zo:
        raise SettingsError(f"sub-volume size {size} exceeds the isotropic volume {(zo, y, x)}; pass a smaller --volume-px")
    rng = np.random.default_rng(seed)
    weights = chunk_weights(vol)
    bounds = chunk_bounds(vol.data.chunks)
    depth_in = min(zin, int(np.ceil(size / f)) + 1)
    kept, origins, candidates = [], [], 0
    for _ in range(20):
        if len(kept) >= n:
            break
        m = max(8, 2 * (n - len(kept)))
        if weights is None:
            zs = rng.integers(0, zo - size + 1, m)
            ys, xs = rng.integers(0, y - size + 1, m), rng.integers(0, x - size + 1, m)
        else:
            zi, ys, xs = positions_in_chunks(rng, weights, bounds, m, (depth_in, size, size), (zin, y, x))
            zs = np.minimum(np.round(zi * f).astype(np.int64), zo - size)
        lo = np.floor(zs / f).astype(np.int64)
        hi = np.minimum(np.ceil((zs + size - 1) / f).astype(np.int64) + 1, zin)
        lazy = [vol.data[a:b, yi:yi + size, xi:xi + size] for a, b, yi, xi in zip(lo, hi, ys, xs)]
        values = dask.compute(*lazy)
        accept = rng.uniform(size=m)
        for z0, a, yi, xi, v, u in zip(zs, lo, ys, xs, values, accept):
            candidates += 1
            sub = resample_z_block(norm.apply(np.asarray(v, np.float32)), int(a), slice(int(z0), int(z0) + size), f)
            sub = np.clip(sub, *SUBVOLUME_RANGE)
            if len(kept) < n and keep_candidate(sub, norm, u, foreground_floor):
                kept.append(sub.astype(np.float32))
                origins.append((int(z0), int(yi), int(xi)))
    if len(kept) < n:
        logger.warning("only %d of %d sub-volumes found foreground after %d candidates", len(kept), n, candidates)
    if len(kept) < N_VALIDATION + 2:
        raise SettingsError(f"only {len(kept)} sub-volumes of {size}^3 could be sampled from {vol.source}; pass a "
                            f"smaller --volume-px")
    return SubVolumes(np.stack(kept), np.array(origins), candidates)


def _augment(vols: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips of every axis and a random y/x transpose, per sub-volume (z stays z)."""
    out = []
    for v in vols:
        for ax in range(3):
            if rng.random() < 0.5:
                v = v[(slice(None),) * ax + (slice(None, None, -1),)]
        if rng.random() < 0.5:
            v = v.transpose(0, 2, 1)
        out.append(np.ascontiguousarray(v))
    return np.stack(out)


# --- slices for the discriminators ------------------------------------------------------------------

def slices_through(v: torch.Tensor, axis: int, k: int, mip: int, rng: np.random.Generator) -> torch.Tensor:
    """``k`` random slices (maximum projections over ``mip`` adjacent ones) of a (B, 1, Z, Y, X) batch,
    normal to ``axis`` (2 = z: lateral planes; 3 = y: XZ; 4 = x: YZ); (B*k, 1, rows, cols), z along rows."""
    n = v.shape[axis]
    idx = rng.integers(0, n - mip + 1, k)
    parts = [v.narrow(axis, int(i), mip).amax(axis) for i in idx]
    return torch.cat(parts, 0)


def axial_slices(v: torch.Tensor, k: int, mip: int, rng: np.random.Generator) -> torch.Tensor:
    """Half XZ, half YZ slices (z along rows)."""
    a = max(1, k // 2)
    return torch.cat([slices_through(v, 3, a, mip, rng), slices_through(v, 4, max(1, k - a), mip, rng)], 0)


def _lsgan(scores: torch.Tensor, target: float) -> torch.Tensor:
    return F.mse_loss(scores.float(), torch.full_like(scores, target, dtype=torch.float32))


def _accuracy(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Patch accuracy of an LSGAN discriminator (targets 1 real, 0 fake; 0.5 = chance)."""
    return 0.5 * (float((real.float() > 0.5).float().mean()) + float((fake.float() < 0.5).float().mean()))


# --- the networks -----------------------------------------------------------------------------------

@dataclass
class CycleGAN:
    G: UNet3D
    F: UNet3D
    D_Y: PatchDiscriminator
    D_X: PatchDiscriminator

    @classmethod
    def build(cls, preset: str, seed: int) -> CycleGAN:
        torch.manual_seed(seed)
        sizes = CYCLEGAN_PRESETS[preset]
        gens = [UNet3D(*sizes["g"]), UNet3D(*sizes["f"])]
        for g in gens:  # near-identity start (see OUT_INIT_SCALE)
            g.out.reset_parameters()
            with torch.no_grad():
                g.out.weight.mul_(OUT_INIT_SCALE)
                g.out.bias.zero_()
        return cls(*gens, PatchDiscriminator(*sizes["d"]), PatchDiscriminator(*sizes["d"]))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G, "F": self.F, "D_Y": self.D_Y, "D_X": self.D_X}

    def parameters(self) -> dict[str, int]:
        return {k: count_parameters(m) for k, m in self.modules().items()}


def _swap_to_z(v: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """An isotropic-domain batch: z swapped with y (axis 3) or x (axis 4). Returns it and the axis now
    holding the stack's z: slices normal to that axis are lateral planes of the stack."""
    axis = 3 if rng.random() < 0.5 else 4
    return v.transpose(2, axis).contiguous(), axis


class _Trainer:
    """One training step of the four networks, and the validation that tracks them."""

    def __init__(self, nets: CycleGAN, s: CycleGANSettings, device: torch.device, precision: str) -> None:
        self.nets, self.s, self.device, self.precision = nets, s, device, precision
        for m in nets.modules().values():
            prepare(m, device)
        self.opt_g, self.sched_g = make_optimizer(list(nets.G.parameters()) + list(nets.F.parameters()), "adam",
                                                  s.lr, 0.0, s.iterations, betas=(0.5, 0.999))
        self.opt_d, self.sched_d = make_optimizer(list(nets.D_Y.parameters()) + list(nets.D_X.parameters()),
                                                  "adam", s.lr, 0.0, s.iterations, betas=(0.5, 0.999))

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return as_input(torch.from_numpy(a)[:, None].to(self.device))

    def step(self, x_np: np.ndarray, y_np: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        n, s = self.nets, self.s
        x = self._tensor(x_np)
        y, zaxis = _swap_to_z(self._tensor(y_np), rng)
        for d in (n.D_Y, n.D_X):
            d.requires_grad_(False)
        with autocast(self.precision, self.device):
            fake_y = n.G(x)
            rec_x = n.F(fake_y)
            fake_x = n.F(y)
            rec_y = n.G(fake_x)
            fy = axial_slices(fake_y, s.slices, s.mip, rng)
            fx = slices_through(fake_x, zaxis, s.slices, s.mip, rng)
            adv = _lsgan(n.D_Y(fy), 1.0) + _lsgan(n.D_X(fx), 1.0)
            cyc = F.l1_loss(rec_x.float(), x) + F.l1_loss(rec_y.float(), y)
            loss_g = adv + s.cycle_weight * cyc
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        for d in (n.D_Y, n.D_X):
            d.requires_grad_(True)
        with autocast(self.precision, self.device):
            real_lat = slices_through(y, zaxis, s.slices, s.mip, rng)  # lateral planes of the stack
            real_ax = axial_slices(x, s.slices, s.mip, rng)
            s_ry, s_fy = n.D_Y(real_lat), n.D_Y(fy.detach())
            s_rx, s_fx = n.D_X(real_ax), n.D_X(fx.detach())
            loss_dy = 0.5 * (_lsgan(s_ry, 1.0) + _lsgan(s_fy, 0.0))
            loss_dx = 0.5 * (_lsgan(s_rx, 1.0) + _lsgan(s_fx, 0.0))
        self.opt_d.zero_grad(set_to_none=True)
        (loss_dy + loss_dx).backward()
        self.opt_d.step()
        self.sched_g.step()
        self.sched_d.step()
        return {"cycle": cyc.item(), "adversarial": adv.item(), "d_y": loss_dy.item(), "d_x": loss_dx.item(),
                "d_y_accuracy": _accuracy(s_ry.detach(), s_fy.detach())}

    @torch.no_grad()
    def validate(self, val: np.ndarray) -> dict[str, float]:
        """Fixed held-out sub-volumes: both cycle L1s and D_Y's accuracy on all their axial vs lateral slices."""
        n = self.nets
        for m in n.modules().values():
            m.eval()
        x = self._tensor(val)
        y = x.transpose(2, 3).contiguous()
        with autocast(self.precision, self.device):
            fake_y, fake_x = n.G(x), n.F(y)
            cyc = F.l1_loss(n.F(fake_y).float(), x) + F.l1_loss(n.G(fake_x).float(), y)
            size = x.shape[2]
            real = torch.cat([x[:, :, i] for i in range(size)], 0)  # every lateral plane
            fake = torch.cat([fake_y[:, :, :, i] for i in range(size)] + [fake_y[..., i] for i in range(size)], 0)
            acc = _accuracy(n.D_Y(real), n.D_Y(fake))
            # How far G moves the data: mean |G(x) - x| (0 = identity).
            change = float((fake_y.float() - x).abs().mean())
        for m in n.modules().values():
            m.train()
        return {"cycle": float(cyc), "d_y_accuracy": acc, "g_change": change}

    def state(self) -> dict:
        return {**{k: m.state_dict() for k, m in self.nets.modules().items()},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict()}

    def load(self, state: dict, source: str) -> None:
        for k, m in self.nets.modules().items():
            load_state_strict(m, state[k], source)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])


# --- the command ------------------------------------------------------------------------------------

def _resuming(out: Path | None, settings: CycleGANSettings, overwrite: bool) -> dict | None:
    """The resume state to continue from, or None to start afresh (after the usual folder checks)."""
    if out is None:
        return None
    resume = out / RESUME_FILE
    if resume.exists() and not overwrite and not (out / MANIFEST_FILE).exists():
        state = read_state(resume, ("settings", "opt_g", "opt_d", "sched_g", "sched_d", "rng", "torch_rng", "iteration",
                                    "history"))
        saved = json.loads(state["settings"])
        now = settings.to_dict()
        diff = sorted(k for k in set(saved) | set(now)
                      if k not in ("device", "precision", "checkpoint_every") and saved.get(k) != now.get(k))
        if diff:
            raise SettingsError(f"{resume} was written with other settings ({', '.join(diff)}); rerun with the same "
                                f"settings to resume, or pass --overwrite to start again")
        return state
    check_new_folder(out, overwrite)
    if resume.exists():
        resume.unlink()
    return None


def train_cyclegan(vol: Volume, out_dir: str | Path | None, settings: CycleGANSettings | None = None,
                   progress: ProgressLike = None, overwrite: bool = False) -> AdaptedModel:
    """Train an OT-CycleGAN on ``vol`` alone; write MODEL_DIR (kind ``cyclegan``, the generator G) when
    ``out_dir`` is given. Rerunning with the same ``out_dir`` and settings resumes an interrupted run.

    Returns an :class:`~ssai3d_dask.models.folder.AdaptedModel` (G, normalisation, no denoiser).
    ``progress``: :mod:`ssai3d_dask.progress` (None: silent).
    """
    settings = settings or CycleGANSettings()
    settings.check_volume(vol)
    out = Path(out_dir) if out_dir is not None else None
    state = _resuming(out, settings, overwrite)
    device = torch.device(resolve_device(settings.device))
    precision = resolve_precision(settings.precision, device)
    geom = isotropic_geometry(vol.shape, vol.voxel_size_um)
    t_start = time.perf_counter()
    norm = volume_statistics(vol, settings.seed)
    pool = sample_subvolumes(vol, settings.n_volumes, settings.volume_px, norm, settings.seed)
    val, train = pool.volumes[:N_VALIDATION], pool.volumes[N_VALIDATION:]
    nets = CycleGAN.build(settings.preset, settings.seed)
    trainer = _Trainer(nets, settings, device, precision)
    rng = np.random.default_rng(settings.seed + 1)
    history: dict = {"parameters": nets.parameters(), "precision": precision, "loss": [], "validation": [],
                     "seconds": 0.0, "pool": {"volumes": len(pool.volumes), "candidates": pool.candidates}}
    start = 0
    if state is not None:
        trainer.load(state, str(out / RESUME_FILE))
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start, history = int(state["iteration"]), json.loads(state["history"])
        logger.info("resuming OT-CycleGAN training at step %d of %d", start, settings.iterations)
    else:
        history["validation"].append({"iteration": 0, **trainer.validate(val)})
    t0 = time.perf_counter()
    bar = as_progress(progress).bar("train OT-CycleGAN", settings.iterations, initial=start, unit="step")
    for it in range(start, settings.iterations):
        xb = _augment(train[rng.integers(0, len(train), settings.batch_size)], rng)
        yb = _augment(train[rng.integers(0, len(train), settings.batch_size)], rng)
        values = trainer.step(xb, yb, rng)
        done = it + 1
        if it % 10 == 0 or done == settings.iterations:
            history["loss"].append({"iteration": done, **{k: round(v, 5) for k, v in values.items()}})
            bar.postfix(cycle=f"{values['cycle']:.4f}", D_Y_acc=f"{values['d_y_accuracy']:.2f}")
        bar.update(1)
        if out is not None and done % settings.checkpoint_every == 0 and done < settings.iterations:
            history["seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            ckpt = {**trainer.state(), "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                    "iteration": done, "history": json.dumps(history), "settings": json.dumps(settings.to_dict())}
            out.mkdir(parents=True, exist_ok=True)
            write_with(out / RESUME_FILE, lambda tmp: torch.save(ckpt, tmp))
    bar.close()
    history["seconds"] = round(history["seconds"] + time.perf_counter() - t0, 2)
    history["validation"].append({"iteration": settings.iterations, **trainer.validate(val)})
    before, after = history["validation"][0], history["validation"][-1]
    logger.info("OT-CycleGAN: %d steps in %.1f s; validation cycle L1 %.4f -> %.4f, D_Y accuracy %.2f -> %.2f",
                settings.iterations - start, history["seconds"], before["cycle"], after["cycle"],
                before["d_y_accuracy"], after["d_y_accuracy"])
    G = nets.G.cpu().eval().to(memory_format=torch.contiguous_format)
    manifest = ModelManifest(kind="cyclegan", z_factor=geom.z_factor, normalization=norm, input=InputRef.of(vol),
                             settings=settings.to_dict(), history=history, package_version=__version__,
                             reach_px=G.reach_px,
                             extra={"seconds_total": round(time.perf_counter() - t_start, 2)})
    if out is not None:
        write_folder(out, G, manifest)
        (out / RESUME_FILE).unlink(missing_ok=True)
    return AdaptedModel(G, manifest)
