"""restore(): plan, prune, run one small task per region with bounded submission, write, resume.

The flow of one restoration:

1. :func:`prepare_restore` checks the settings, derives the output grid (:mod:`.geometry`) and the block
   plan (:mod:`.plan`), takes the normalisation (the model's, or sampled where the tissue is), and decides
   which regions can hold anything (:mod:`.tissue`). It writes nothing, so ``--dry-run`` uses it too.
2. :func:`restore` creates the output (sharded zarr v3 by default) and runs :func:`.task.run_region` for every
   region that is neither pruned nor already recorded done (:mod:`.scheduling`). A task receives its
   region, the small plan, a picklable source handle and a small spec, and reads its own crop.
3. Each task writes its region at level 0 and at every pyramid level nested in it, then records itself
   done. The remaining coarse levels and the NGFF metadata are written at the end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ssai3d_dask import __version__
from ssai3d_dask.progress import ProgressLike
from ssai3d_dask.settings import NETWORK_METHODS, RestoreSettings
from ssai3d_dask.models.folder import cached_folder, check_folder
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.errors import Interrupted, SettingsError
from ssai3d_dask.geometry import Geometry, isotropic_geometry, output_shape
from ssai3d_dask.io.lock import RunLock
from ssai3d_dask.io.omezarr import MultiscaleWriter, check_output
from ssai3d_dask.restoration.plan import Plan, auto_region, computed_pixel_ratio, make_plan
from ssai3d_dask.io.pyramid import Level, pyramid_layout
from ssai3d_dask.restoration.kernels import default_halo, to_output
from ssai3d_dask.restoration.rl import default_rl_halo, gaussian_psf_on_grid, load_psf
from ssai3d_dask.restoration.failures import after_failure, resume_command, storage_error
from ssai3d_dask.restoration.pruning import prune_regions, share_fill, unwritten_level
from ssai3d_dask.io.statistics import volume_statistics
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.io.source import Source
from ssai3d_dask.io.tissue import Occupancy, tissue_views
from ssai3d_dask.io.volume import Volume

logger = logging.getLogger(__name__)

@dataclass
class RestoreJob:
    """Everything decided before the first region runs (nothing written yet)."""

    settings: RestoreSettings
    geometry: Geometry
    plan: Plan
    levels: list[Level]
    norm: Normalization
    dtype: np.dtype
    fill_value: float  # what pruned regions read: the output of computing them
    source: Source
    keep: np.ndarray  # bool over plan.grid: regions to compute (False: never-written input, read as fill_value)
    pruned: dict[str, int]
    spec: dict
    model: object | None = None  # AdaptedModel for ssai3d/care/cyclegan
    psf: np.ndarray | None = None
    provenance_model: dict | None = None
    notes: list[str] = field(default_factory=list)
    source_volume: Volume | None = None

    @property
    def prefix(self) -> str:
        """Block-id prefix of this job's (t, c) slice (empty for a 3D output)."""
        return self.spec.get("prefix", "")

    def todo(self, done: set[str] = frozenset()):  # type: ignore[assignment]
        """Region indices to run, in C order, lazily."""
        prefix = self.prefix
        for i in np.flatnonzero(self.keep.ravel()):
            if f"{prefix}r{int(i):07d}" not in done:
                yield int(i)

    def n_done(self, done: set[str]) -> int:
        """How many of this job's kept regions are recorded done."""
        prefix, flat, n = self.prefix, self.keep.ravel(), 0
        for d in done:
            if d.startswith(prefix + "r") and d[len(prefix) + 1:].isdigit():
                i = int(d[len(prefix) + 1:])
                n += bool(i < flat.size and flat[i])
        return n

    @cached_property
    def _kept_occupancy(self) -> Occupancy:
        """One integral image of the kept regions, reused for every box (made after pruning is final)."""
        return Occupancy(self.keep, tuple(float(r) for r in self.plan.region_shape))  # type: ignore[arg-type]

    def occupied(self, box) -> bool:
        """Whether a level-0 output box meets a kept region (else it holds only the fill value)."""
        return self._kept_occupancy.any_in_box(box)


#: Output voxels from which ``--compile auto`` compiles on CUDA. Measured on an H100 (small preset, bf16):
#: eager 1.27 Mvoxel/s, compiled 3.0 Mvoxel/s after a 64 s compilation, which pays for itself after about
#: 140 Mvoxel; twice that, so that auto never costs much on the jobs where it cannot win.
COMPILE_FROM_VOXELS = 2**28


def resolve_compile(mode: str, device: str, out_voxels: int) -> str:
    """``on``/``off`` for ``--compile`` auto|on|off: auto compiles on CUDA for volumes of at least
    :data:`COMPILE_FROM_VOXELS` output voxels (on CPU the compilation costs more than it saves)."""
    if mode != "auto":
        return mode
    return "on" if device == "cuda" and out_voxels >= COMPILE_FROM_VOXELS else "off"


def prepare_restore(vol: Volume, model_dir: str | Path | None, settings: RestoreSettings | None = None,
                    adapted=None) -> RestoreJob:
    """Validate and plan a restoration; read only statistics samples, the store listing and a coarse level.

    ``adapted`` (an AdaptedModel) may stand in for ``model_dir`` (the dry run of ``ssai3d run`` uses the
    base model, as no adapted one exists yet).
    """
    settings = settings or RestoreSettings()
    uses_model = settings.method.name in NETWORK_METHODS
    if settings.method.name == "cyclegan" and settings.view != "mean":
        raise SettingsError(f"--view {settings.view}: the OT-CycleGAN generator restores whole sub-volumes in 3D, "
                            f"not XZ/YZ slices; leave --view at mean")
    if uses_model and adapted is None:
        check_folder(model_dir, settings.method.name)
        adapted = cached_folder(model_dir)
    geom = isotropic_geometry(vol.shape, vol.voxel_size_um)
    notes = []
    if geom.z_finer_than_x:
        notes.append(f"z step {geom.in_voxel_um[0]} um is finer than x {geom.in_voxel_um[2]} um: nothing to undo "
                     f"along z; the output keeps z spacing {geom.out_voxel_um[0]} um")
    if uses_model:
        norm, model, denoiser = adapted.norm, adapted.model, adapted.denoiser
        if abs(adapted.z_factor - geom.z_factor) > 0.02 * geom.z_factor:
            notes.append(f"model was adapted for dz/dx = {adapted.z_factor:.3f}, this volume has "
                         f"{geom.z_factor:.3f}; results may suffer")
    else:
        norm, model, denoiser = volume_statistics(vol), None, Denoiser()
    psf = None
    if settings.method.name == "rl":
        psf = (load_psf(settings.method.psf_file) if settings.method.psf_file
               else gaussian_psf_on_grid(settings.method.psf_sigma_um, geom.out_voxel_um[2], geom.z_factor)[0])
        halo = settings.halo if settings.halo is not None else default_rl_halo(psf)
    elif settings.method.name == "interp":  # linear z interpolation reaches only the input planes input_crop adds
        halo = settings.halo if settings.halo is not None else 0
    else:
        halo = settings.halo if settings.halo is not None else default_halo(model, denoiser)
    region = settings.region or auto_region(output_shape(vol.shape, geom.z_factor), settings.shards or settings.chunks,
                                            halo, settings.region_budget(_tasks_per_machine(settings)),
                                            settings.method.name, settings.view)
    if settings.region is None:
        logger.info("region %s: the least halo overhead within %.1f GiB per task (--region, --region-memory)",
                    region, settings.region_budget(_tasks_per_machine(settings)) / 2**30)
    try:
        plan = make_plan(vol.shape, geom.z_factor, settings.chunks, region, (halo, halo, halo))
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    dtype = np.dtype(settings.dtype or vol.dtype)
    levels = pyramid_layout(plan.out_shape, geom.out_voxel_um, plan.chunks, plan.region_shape,
                            settings.shard_shape(plan.region_shape))
    source = vol.source_handle()
    keep, pruned = prune_regions(plan, tissue_views(vol), settings)
    spec = {"method": settings.method.name, "model_dir": str(Path(model_dir).resolve()) if model_dir else None,
            "psf_path": None, "rl_iterations": getattr(settings.method, "iterations", None), "norm": norm.to_dict(), "view": settings.view,
            "batch": settings.batch or (32 if settings.resolved_device() == "cuda" else None),
            "device": settings.resolved_device(), "precision": settings.precision,
            "compile": resolve_compile(settings.compile, settings.resolved_device(), int(np.prod(plan.out_shape))),
            "dtype": dtype.str, "skip_background": settings.skip_background,
            "empty_level": settings.empty_level, "levels": levels, "torch_threads": None}
    fill = unwritten_level(plan, spec, source.fill_value, model, denoiser, psf) if pruned["unwritten"] else None
    if fill is None:
        fill = float(to_output(np.zeros(1, np.float32), norm, dtype)[0])  # nothing pruned: any value is right
        if pruned["unwritten"]:
            notes.append(f"the {settings.method.name} output of a crop holding only the input's fill value "
                         f"{source.fill_value:g} is not one value; the {pruned['unwritten']} regions of unwritten "
                         f"input are computed instead of pruned")
            keep, pruned = np.ones_like(keep), {"unwritten": 0}
    prov = None
    if settings.method.name == "ssai3d":
        prov = adapted.manifest.get("selection", {}) | {"base": adapted.manifest.get("base_model")}
    elif settings.method.name in ("care", "cyclegan"):
        prov = {"kind": settings.method.name, "settings": adapted.manifest.get("settings")}
    return RestoreJob(settings, geom, plan, levels, norm, dtype, fill, source, keep, pruned, spec,
                      adapted if uses_model else None, psf, prov, notes, vol)


def _tasks_per_machine(settings: RestoreSettings) -> int:
    """Tasks that run at once on a machine like this one: one per GPU, else the default CPU workers."""
    from ssai3d_dask.restoration.cluster import default_workers, gpu_count

    return gpu_count() if settings.resolved_device() == "cuda" else default_workers(settings.method.name)


# --- the whole restoration ------------------------------------------------------------------------

def run_record(job: RestoreJob) -> dict:
    """What must not change between a run and its ``--resume`` (results would otherwise mix)."""
    s, vol = job.settings, job.source_volume
    return {"method": s.method.name, "model_dir": job.spec["model_dir"], "halo": job.plan.halo[0], "view": s.view,
            "normalization": job.norm.to_dict(), "dtype": job.dtype.str, "skip_empty": s.skip_empty,
            "skip_background": s.skip_background, "empty_level": s.empty_level, "rl_iterations": getattr(s.method, "iterations", None),
            "psf": None if job.psf is None else [list(job.psf.shape), float(np.round(job.psf.sum(), 6)),
                                                 float(np.round((job.psf ** 2).sum(), 9))],
            "input": {"source": vol.source, "shape": list(vol.shape), "voxel_size_um": list(vol.voxel_size_um),
                      "selection": vol.selection}}


def slice_models(ds, model_dir, method: str) -> dict:
    """The model folder of every (t, c) slice: MODEL_DIR itself for one model, MODEL_DIR/c{c} (or
    MODEL_DIR/t{t}/c{c}) for a folder of per-channel models, as ``ssai3d run`` writes them."""
    keys = list(ds.volumes)
    if method not in NETWORK_METHODS:
        return dict.fromkeys(keys)
    if model_dir is None or (Path(model_dir) / "model.pt").exists() or not any(Path(model_dir).glob("**/model.pt")):
        check_folder(model_dir, method)  # one model folder (or none, with the reason)
        if ds.channels is not None and len(ds.channels) > 1 and model_dir is not None:
            raise SettingsError(f"{model_dir} holds one model, this input has channels {ds.channels}: channels "
                                f"differ, so each needs its own adaptation (`ssai3d run` or `ssai3d adapt` on the "
                                f"whole input write MODEL_DIR/c0, c1, ...); or choose one with --channel")
        return dict.fromkeys(keys, model_dir)
    found, missing = {}, []
    for t, c in keys:
        root = Path(model_dir)
        candidates = ([root / f"t{t}" / f"c{c}", root / f"t{t}"] if t is not None else []) + [root / f"c{c}"]
        hit = next((d for d in candidates if (d / "model.pt").exists()), None)
        if hit is None:
            missing.append(f"c{c}" if t is None else f"t{t}/c{c}")
        found[(t, c)] = hit
    if missing:
        have = sorted(str(p.relative_to(model_dir).parent) for p in Path(model_dir).glob("**/model.pt"))
        raise SettingsError(f"{model_dir} has no model for {', '.join(missing)} (it holds {', '.join(have) or 'none'}); "
                            f"adapt those channels (`ssai3d adapt INPUT --out {model_dir} --channel ...`) or select "
                            f"the channels it has with --channel")
    return found


def restore(vol, model_dir: str | Path | None, out: str | Path, settings: RestoreSettings | None = None,
            overwrite: bool = False, resume: bool = False, client=None, progress: ProgressLike = None) -> Path:
    """Restore a :class:`Volume` (or every slice of a :class:`~ssai3d_dask.io.dataset.Dataset`) into a
    multiscale OME-Zarr at ``out`` with isotropic voxels.

    Parameters
    ----------
    vol : Volume or Dataset
        A dataset keeps its channel/time axes in the output; each slice runs through the same block plan.
    model_dir : path or None
        An adapted model folder (``ssai3d adapt``, method ``ssai3d``), a CARE model folder
        (``ssai3d train-care``, method ``care``) or an OT-CycleGAN one (``ssai3d train-cyclegan``, method
        ``cyclegan``); for a multichannel dataset a folder of per-channel
        models (``MODEL_DIR/c0``, ``c1``, ...); None for ``rl`` and ``interp``.
    client : distributed.Client, optional
        Used when given (or when one is active); otherwise regions run one after another in this process.
    resume : bool
        Keep regions recorded as done in ``out`` and compute only the rest.
    """
    from ssai3d_dask.io.dataset import Dataset, dataset_from_volume

    ds = vol if isinstance(vol, Dataset) else dataset_from_volume(vol)
    settings = settings or RestoreSettings()
    models = slice_models(ds, model_dir, settings.method.name)
    out = Path(out)
    check_output(out, overwrite, resume, [ds.source, *(m for m in models.values() if m)])  # before any work
    with RunLock(out):  # one run per output, --overwrite and --resume included
        return _restore(ds, models, out, settings, overwrite, resume, client, progress)


def _restore(ds, models: dict, out: Path, settings: RestoreSettings, overwrite: bool, resume: bool, client,
             progress: ProgressLike) -> Path:
    from itertools import chain

    from ssai3d_dask.restoration.scheduling import run_regions

    jobs = []
    for lead, t, c, v in ds.slices():
        job = prepare_restore(v, models[(t, c)], settings)
        job.spec["lead"] = lead
        job.spec["prefix"] = "".join(f"{a}{i}" for a, i in zip(ds.axes, lead)) + ("-" if lead else "")
        jobs.append(job)
    fill = share_fill(jobs) if len(jobs) > 1 else jobs[0].fill_value
    first = jobs[0]
    for note in dict.fromkeys(n for j in jobs for n in j.notes):
        logger.warning(note)
    plan = first.plan
    slices = [{"prefix": j.prefix, "model_dir": j.spec["model_dir"], "normalization": j.norm.to_dict()} for j in jobs]
    record = run_record(first) | {"slices": slices}
    created = not out.exists()
    n_keep = sum(int(j.keep.sum()) for j in jobs)
    writer = MultiscaleWriter(out, plan.out_shape, first.dtype, first.geometry.out_voxel_um, plan.chunks,
                              overwrite=overwrite, resume=resume, ngff_version=settings.ngff_version, name="restored",
                              region_shape=plan.region_shape, shards=settings.shard_shape(plan.region_shape),
                              fill_value=fill,
                              run_record=record, lead_axes=ds.axes, lead_shape=ds.lead_shape,
                              channel_labels=ds.labels, time_unit=ds.time_meta.get("unit"))
    try:
        if first.psf is not None:
            psf_path = out / ".ssai3d" / "psf.npy"
            np.save(psf_path, first.psf)
            for j in jobs:
                j.spec["psf_path"] = str(psf_path.resolve())
        done = writer.done_blocks() if resume else set()
        n_done = sum(j.n_done(done) for j in jobs)
        n_todo = n_keep - n_done
        pruned = sum(j.pruned["unwritten"] for j in jobs)
        total = plan.n_regions * len(jobs)
        logger.info("output %s voxels %s um; %d regions of %s (%d slices), halo %d; pruned %d (unwritten input, "
                    "read as %g); %d already done, %d to run", ds.lead_shape + plan.out_shape,
                    first.geometry.out_voxel_um, total, plan.region_shape, len(jobs), plan.halo[0], pruned, fill,
                    n_done, n_todo)
        if client is None:
            try:
                from distributed import get_client

                client = get_client()
            except ValueError:
                client = None
        todo = chain.from_iterable(((j, i) for i in j.todo(done)) for j in jobs)
        stats = run_regions(todo, n_todo, str(out), client, settings.in_flight, progress)
        by_lead = {tuple(j.spec["lead"]): j for j in jobs}
        writer.build_pyramid(occupied=lambda lead, box: by_lead[tuple(lead)].occupied(box))
        provenance = {"package_version": __version__, "input": {"source": ds.source, "shape": list(first.source_volume.shape),
                      "voxel_size_um": list(first.source_volume.voxel_size_um), "axes": ds.axes, "times": ds.times,
                      "channels": ds.channels, "selection": first.source_volume.selection},
                      "method": settings.method.name, "model_dir": first.spec["model_dir"], "model": first.provenance_model,
                      "slices": slices if len(jobs) > 1 else None,
                      "psf_shape": list(first.psf.shape) if first.psf is not None else None,
                      "settings": settings.to_dict() | {"halo": plan.halo[0]}, "normalization": first.norm.to_dict(),
                      "precision": {"requested": settings.precision, "used_this_run": stats["precisions"],
                                    "compiled": first.spec["compile"] == "on"},
                      "regions": {"total": total, "pruned_unwritten": pruned, "unwritten_reads": fill,
                                  "computed_this_run": stats["regions"]},
                      "work": {"computed_pixel_ratio": round(computed_pixel_ratio(
                          plan, first.keep, settings.method.name, settings.view), 3),
                          "seconds": round(stats["seconds"], 2),
                          "output_mvoxel_per_s": round(stats["voxels"] / 1e6 / max(stats["seconds"], 1e-9), 4)}}
        writer.write_metadata(None, provenance)  # omero windows from the written data, per channel
    except Interrupted as exc:
        after_failure(out, writer, created, n_keep)
        raise Interrupted(f"{exc}; {out} is resumable: {resume_command()}") from None
    except OSError as exc:
        after_failure(out, writer, created, n_keep)
        left = (n_keep - len(writer.done_blocks())) * math.prod(plan.region_shape) * first.dtype.itemsize
        err = storage_error(exc, out, left)
        if err is None:
            raise
        raise err from exc
    except BaseException:
        after_failure(out, writer, created, n_keep)
        raise
    return out


