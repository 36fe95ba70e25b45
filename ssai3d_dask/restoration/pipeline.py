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
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.models.folder import AdaptedModel, cached_folder, slice_folders
from ssai3d_dask.models.manifest import InputRef
from ssai3d_dask.errors import Interrupted, SettingsError
from ssai3d_dask.geometry import Geometry, isotropic_geometry, output_shape
from ssai3d_dask.io.lock import RunLock
from ssai3d_dask.io.omezarr import MultiscaleWriter, check_output
from ssai3d_dask.restoration.plan import Plan, auto_region, computed_pixel_ratio, make_plan
from ssai3d_dask.io.pyramid import Level, pyramid_layout
from ssai3d_dask.restoration.kernels import to_output
from ssai3d_dask.restoration.methods import Resources, RestorationMethod, get_method
from ssai3d_dask.restoration.records import Provenance, RunRecord, SliceRecord
from ssai3d_dask.restoration.spec import TaskSpec
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
    spec: TaskSpec
    method: RestorationMethod
    resources: Resources = field(default_factory=Resources)  # what the method computes with, on this machine
    model: AdaptedModel | None = None  # the model folder, for a method that restores with one
    provenance_model: dict | None = None
    notes: list[str] = field(default_factory=list)
    source_volume: Volume | None = None

    @property
    def prefix(self) -> str:
        """Block-id prefix of this job's (t, c) slice (empty for a 3D output)."""
        return self.spec.prefix

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
    method = get_method(settings.method.name)
    method.check(settings)
    if method.uses_model and adapted is None:
        method.check_model(model_dir)
        adapted = cached_folder(model_dir)
    geom = isotropic_geometry(vol.shape, vol.voxel_size_um)
    notes = []
    if geom.z_finer_than_x:
        notes.append(f"z step {geom.in_voxel_um[0]} um is finer than x {geom.in_voxel_um[2]} um: nothing to undo "
                     f"along z; the output keeps z spacing {geom.out_voxel_um[0]} um")
    if method.uses_model:
        norm = adapted.norm
        if abs(adapted.z_factor - geom.z_factor) > 0.02 * geom.z_factor:
            notes.append(f"model was adapted for dz/dx = {adapted.z_factor:.3f}, this volume has "
                         f"{geom.z_factor:.3f}; results may suffer")
    else:
        norm, adapted = volume_statistics(vol), None
    resources = method.resources(settings, geom, adapted)
    halo = settings.halo if settings.halo is not None else method.halo(resources)
    budget = settings.region_budget(_tasks_per_machine(settings, method))
    region = settings.region or auto_region(output_shape(vol.shape, geom.z_factor), settings.shards or settings.chunks,
                                            halo, budget, method.work_view(settings.view))
    if settings.region is None:
        logger.info("region %s: the least halo overhead within %.1f GiB per task (--region, --region-memory)",
                    region, budget / 2**30)
    try:
        plan = make_plan(vol.shape, geom.z_factor, settings.chunks, region, (halo, halo, halo))
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    dtype = np.dtype(settings.dtype or vol.dtype)
    levels = pyramid_layout(plan.out_shape, geom.out_voxel_um, plan.chunks, plan.region_shape,
                            settings.shard_shape(plan.region_shape))
    source = vol.source_handle()
    keep, pruned = prune_regions(plan, tissue_views(vol), settings)
    device = settings.resolved_device()
    spec = TaskSpec(method=method.name, norm=norm, dtype=dtype.str, levels=tuple(levels),
                    method_settings=settings.method,
                    model_dir=str(Path(model_dir).resolve()) if model_dir else None, view=settings.view,
                    batch=settings.batch or (32 if device == "cuda" else None), device=device,
                    precision=settings.precision,
                    compile=resolve_compile(settings.compile, device, int(np.prod(plan.out_shape))) == "on",
                    skip_background=settings.skip_background, empty_level=settings.empty_level)
    fill = unwritten_level(plan, spec, source.fill_value, resources) if pruned["unwritten"] else None
    if fill is None:
        fill = float(to_output(np.zeros(1, np.float32), norm, dtype)[0])  # nothing pruned: any value is right
        if pruned["unwritten"]:
            notes.append(f"the {method.name} output of a crop holding only the input's fill value "
                         f"{source.fill_value:g} is not one value; the {pruned['unwritten']} regions of unwritten "
                         f"input are computed instead of pruned")
            keep, pruned = np.ones_like(keep), {"unwritten": 0}
    return RestoreJob(settings, geom, plan, levels, norm, dtype, fill, source, keep, pruned, spec, method, resources,
                      adapted, method.provenance(adapted), notes, vol)


def _tasks_per_machine(settings: RestoreSettings, method: RestorationMethod) -> int:
    """Tasks that run at once on a machine like this one: one per GPU, else the method's default CPU workers."""
    from ssai3d_dask.restoration.cluster import default_workers, gpu_count

    return gpu_count() if settings.resolved_device() == "cuda" else default_workers(method.name)


# --- the whole restoration ------------------------------------------------------------------------

def run_record(job: RestoreJob, slices: tuple[SliceRecord, ...] = ()) -> RunRecord:
    """What must not change between a run and its ``--resume`` (results would otherwise mix)."""
    s, psf = job.settings, job.resources.psf
    return RunRecord(method=s.method.name, method_settings=s.method.to_dict(), model_dir=job.spec.model_dir,
                     halo=job.plan.halo[0], view=s.view, normalization=job.norm, dtype=job.dtype.str,
                     skip_empty=s.skip_empty, skip_background=s.skip_background, empty_level=s.empty_level,
                     psf=None if psf is None else [list(psf.shape), float(np.round(psf.sum(), 6)),
                                                   float(np.round((psf ** 2).sum(), 9))],
                     input=InputRef.of(job.source_volume), slices=slices)


def slice_models(ds, model_dir, method_name: str) -> dict:
    """The model folder of every (t, c) slice: MODEL_DIR itself for one model, MODEL_DIR/c{c} (or
    MODEL_DIR/t{t}/c{c}) for a folder of per-channel models (:func:`~ssai3d_dask.models.folder.slice_folders`),
    each checked to hold the kind of model the method restores with."""
    keys, method = list(ds.volumes), get_method(method_name)
    if not method.uses_model:
        return dict.fromkeys(keys)
    found = slice_folders(model_dir, keys, ds.channels, check=method.check_model)
    return dict.fromkeys(keys, model_dir) if found is None else found


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
        job.spec = job.spec.replace(lead=tuple(lead), prefix="".join(f"{a}{i}" for a, i in zip(ds.axes, lead))
                                    + ("-" if lead else ""))
        jobs.append(job)
    fill = share_fill(jobs) if len(jobs) > 1 else jobs[0].fill_value
    first = jobs[0]
    for note in dict.fromkeys(n for j in jobs for n in j.notes):
        logger.warning(note)
    plan = first.plan
    slices = tuple(SliceRecord(j.prefix, j.spec.model_dir, j.norm) for j in jobs)
    created = not out.exists()
    n_keep = sum(int(j.keep.sum()) for j in jobs)
    writer = MultiscaleWriter(out, plan.out_shape, first.dtype, first.geometry.out_voxel_um, plan.chunks,
                              overwrite=overwrite, resume=resume, ngff_version=settings.ngff_version, name="restored",
                              region_shape=plan.region_shape, shards=settings.shard_shape(plan.region_shape),
                              fill_value=fill,
                              run_record=run_record(first, slices).to_dict(), lead_axes=ds.axes,
                              lead_shape=ds.lead_shape, channel_labels=ds.labels, time_unit=ds.time_meta.get("unit"))
    try:
        psf = first.resources.psf
        if psf is not None:  # workers load the PSF from the output's side folder, not from the task
            psf_path = out / ".ssai3d" / "psf.npy"
            np.save(psf_path, psf)
            for j in jobs:
                j.spec = j.spec.replace(psf_path=str(psf_path.resolve()))
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
        by_lead = {j.spec.lead: j for j in jobs}
        writer.build_pyramid(occupied=lambda lead, box: by_lead[tuple(lead)].occupied(box))
        view = first.method.work_view(settings.view)
        provenance = Provenance(
            package_version=__version__, input=InputRef.of(first.source_volume).replace_source(ds.source),
            axes=ds.axes, times=ds.times, channels=ds.channels, method=settings.method.name,
            model_dir=first.spec.model_dir, model=first.provenance_model, slices=slices if len(jobs) > 1 else None,
            psf_shape=list(psf.shape) if psf is not None else None,
            settings=settings.to_dict() | {"halo": plan.halo[0]}, normalization=first.norm,
            precision={"requested": settings.precision, "used_this_run": stats["precisions"],
                       "compiled": first.spec.compile},
            regions={"total": total, "pruned_unwritten": pruned, "unwritten_reads": fill,
                     "computed_this_run": stats["regions"]},
            work={"computed_pixel_ratio": round(computed_pixel_ratio(plan, first.keep, view), 3),
                  "seconds": round(stats["seconds"], 2),
                  "output_mvoxel_per_s": round(stats["voxels"] / 1e6 / max(stats["seconds"], 1e-9), 4)})
        writer.write_metadata(None, provenance.to_dict())  # omero windows from the written data, per channel
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


