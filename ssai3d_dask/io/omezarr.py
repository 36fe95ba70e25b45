"""Multiscale OME-Zarr writing: chunk-aligned region writes, pyramid, NGFF metadata.

Layout of an output written here::

    out.ome.zarr/
      zarr.json            NGFF 0.5 multiscales + omero window (zarr v3)   [or .zattrs, NGFF 0.4, zarr v2]
      0/ 1/ 2/ ...         pyramid levels, (z, y, x)
      .ssai3d/done/        one record per finished level-0 region (resume)

Each level-0 task writes whole chunks that no other task touches, so tasks
can run in any order, on any worker, and be repeated. Completion is recorded
per region in its own file (zarr skips all-zero chunks, so chunk presence is
no proof of completion).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_multiscales_metadata

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.pyramid import DOWNSAMPLING_TYPE, Level, downsample_mean, pyramid_layout
from ssai3d_dask.io.source import cached_array
from ssai3d_dask.io.files import check_creatable, write_json
from ssai3d_dask.ops.grid import grid_slices

logger = logging.getLogger(__name__)

DONE_DIR = ".ssai3d/done"
RUN_RECORD = ".ssai3d/run.json"


def default_window(sample: np.ndarray, dtype: np.dtype, fill_value: float | None = None) -> dict[str, float]:
    """omero window from robust percentiles (0.1, 99.9) of a sample, with the dtype range.

    When more than half the sample is ``fill_value`` (a sparse volume: mostly never-written chunks), the
    percentiles come from the other voxels, so the window shows the tissue rather than the void.
    """
    vals = np.asarray(sample, dtype=np.float64).ravel()
    if fill_value is not None and vals.size:
        other = vals[vals != fill_value]
        if other.size >= 1000 and other.size < vals.size / 2:
            vals = other
    lo, hi = (np.percentile(vals, (0.1, 99.9)) if vals.size else (0.0, 1.0))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        dmin, dmax = float(info.min), float(info.max)
    else:
        dmin, dmax = float(min(lo, vals.min() if vals.size else 0)), float(max(hi, vals.max() if vals.size else 1))
    return {"start": float(lo), "end": float(max(hi, lo + 1e-6)), "min": dmin, "max": dmax}


class MultiscaleWriter:
    """An OME-Zarr image being written: level-0 regions (with their task-written levels), then the rest of
    the pyramid, then metadata.

    Parameters
    ----------
    path : str or Path
        Output folder (conventionally ``*.ome.zarr``).
    shape : (z, y, x)
    dtype : numpy dtype
    voxel_size_um : (dz, dy, dx)
    chunks : (cz, cy, cx)
    overwrite : bool
        Replace an existing output; otherwise an existing path is an error.
    resume : bool
        Open an existing output of the same layout and keep its records.
    ngff_version : "0.5" (zarr v3) or "0.4" (zarr v2)
    region_shape : (z, y, x), optional
        The regions tasks will write; levels nested in a region are laid out for them (:mod:`.pyramid`).
    shards : (z, y, x), optional
        Level-0 shard shape (zarr v3 only); a region must be a whole number of shards.
    fill_value : float
        What unwritten chunks read as (restore uses the background level).
    run_record : dict, optional
        Written to ``.ssai3d/run.json`` on creation; on resume it must equal the stored one.
    lead_axes : str
        Non-spatial axes before (z, y, x), e.g. ``"c"`` or ``"tc"``; ``lead_shape`` their sizes. Chunks and
        shards span one entry along them, so every (t, c) slice is written and resumed on its own.
    channel_labels : list of str
        omero labels, one per channel (with a ``c`` axis).
    time_unit : str, optional
        Unit of the ``t`` axis.
    max_levels : int
        At most this many levels below level 0 (0: a single-level image).
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: Any, voxel_size_um: Sequence[float],
                 chunks: Sequence[int], overwrite: bool = False, resume: bool = False,
                 ngff_version: str = "0.5", name: str = "image", units: str = "micrometer",
                 region_shape: Sequence[int] | None = None, shards: Sequence[int] | None = None,
                 fill_value: float = 0, run_record: dict | None = None, lead_axes: str = "",
                 lead_shape: Sequence[int] = (), channel_labels: Sequence[str] = (), time_unit: str | None = None,
                 max_levels: int = 12) -> None:
        self.path = Path(path)
        self.lead_axes = lead_axes
        self.lead_shape = tuple(int(n) for n in lead_shape)
        if len(self.lead_axes) != len(self.lead_shape) or set(self.lead_axes) - set("tc"):
            raise VolumeError(f"lead axes {lead_axes!r} with sizes {self.lead_shape}: give t and/or c, one size each")
        self.channel_labels = list(channel_labels)
        self.time_unit = time_unit
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size_um = tuple(float(v) for v in voxel_size_um)
        self.name = name
        self.units = units
        if ngff_version not in ("0.4", "0.5"):
            raise VolumeError(f"NGFF version {ngff_version!r} unsupported; use 0.4 or 0.5")
        if shards is not None and ngff_version == "0.4":
            raise VolumeError("sharding needs zarr v3 (NGFF 0.5); use --no-sharding or --ngff-version 0.5")
        self.fmt = FormatV05() if ngff_version == "0.5" else FormatV04()
        self.zarr_format = 3 if ngff_version == "0.5" else 2
        self.levels = pyramid_layout(self.shape, self.voxel_size_um, chunks, region_shape, shards, max_levels)
        self.chunks = self.levels[0].chunks
        self.factors = [lv.step for lv in self.levels[1:]]
        exists = self.path.exists()
        if exists and resume:
            self.group = zarr.open_group(str(self.path), mode="r+")
            self._check_resume(run_record)
            return
        if exists and not overwrite:
            raise VolumeError(f"output {self.path} already exists; pass --overwrite to replace it or --resume to finish it")
        if exists:
            shutil.rmtree(self.path)
        self.group = zarr.open_group(str(self.path), mode="w", zarr_format=self.zarr_format)
        fill = _cast_fill(fill_value, self.dtype)
        one = (1,) * len(self.lead_shape)
        for i, lv in enumerate(self.levels):
            kw: dict[str, Any] = {"dimension_names": [*self.lead_axes, *"zyx"]} if self.zarr_format == 3 else {}
            if lv.shards is not None:
                kw["shards"] = one + lv.shards
            self.group.create_array(str(i), shape=self.lead_shape + lv.shape, chunks=one + lv.chunks, dtype=self.dtype,
                                    fill_value=fill, **kw)
        (self.path / DONE_DIR).mkdir(parents=True, exist_ok=True)
        if run_record is not None:
            write_json(self.path / RUN_RECORD, run_record, indent=1, sort_keys=True)

    def _check_resume(self, run_record: dict | None) -> None:
        for i, lv in enumerate(self.levels):
            arr = self.group[str(i)] if str(i) in self.group else None
            one = (1,) * len(self.lead_shape)
            want = (self.lead_shape + lv.shape, self.dtype, one + lv.chunks, one + lv.shards if lv.shards else None)
            got = None if arr is None else (arr.shape, arr.dtype, arr.chunks, arr.shards)
            if got != want:
                held = "nothing" if arr is None else f"{arr.shape} {arr.dtype} chunks {arr.chunks} shards {arr.shards}"
                raise VolumeError(
                    f"cannot resume into {self.path}: level {i} holds {held}, this run writes {lv.shape} {self.dtype} "
                    f"chunks {lv.chunks} shards {lv.shards}; use the first run's options or --overwrite")
        stored = self.path / RUN_RECORD
        if run_record is not None and stored.exists():
            old = json.loads(stored.read_text())
            diff = sorted(k for k in set(old) | set(run_record)
                          if json.dumps(old.get(k), sort_keys=True, default=str)
                          != json.dumps(run_record.get(k), sort_keys=True, default=str))
            if diff:
                raise VolumeError(f"cannot resume into {self.path}: it was started with another {', '.join(diff)} "
                                  f"({diff[0]} was {old.get(diff[0])!r}, now {run_record.get(diff[0])!r}); "
                                  f"rerun with the first run's options or use --overwrite")

    # --- level 0 -------------------------------------------------------------------------
    @property
    def level0(self) -> zarr.Array:
        return self.group["0"]

    @property
    def task_levels(self) -> int:
        """How many levels (from 0) region tasks write."""
        return sum(lv.in_task for lv in self.levels)

    def check_region(self, region: Sequence[slice]) -> None:
        """A region must start on chunk boundaries and end on one or at the array edge."""
        for s, c, n in zip(region, self.chunks, self.shape):
            if s.start % c or (s.stop % c and s.stop != n):
                raise VolumeError(f"region {region} is not chunk-aligned (chunks {self.chunks}, shape {self.shape})")

    def mark_done(self, block_id: str, record: dict) -> None:
        mark_done(self.path, block_id, record)

    def done_blocks(self) -> set[str]:
        done = self.path / DONE_DIR
        return {e.name[:-5] for e in os.scandir(done) if e.name.endswith(".json")} if done.exists() else set()

    # --- pyramid and metadata ------------------------------------------------------------
    def build_pyramid(self, occupied: Callable[[tuple, Sequence[slice]], bool] | None = None, batch: int = 64) -> None:
        """Levels not written by region tasks, each from the level above (:func:`.pyramid.downsample_mean`).

        ``occupied(lead, box)`` says whether a level-0 box of the (t, c) slice ``lead`` (``()`` for 3D
        output) may hold anything but the fill value; blocks where it says no are skipped (they read as
        the fill value). Blocks run on the active Dask scheduler.
        """
        import dask

        first = max(self.task_levels, 1)
        for level in range(first, len(self.levels)):
            lv, src = self.levels[level], self.group[str(level - 1)]
            target = self.group[str(level)]
            todo = []
            for lead in np.ndindex(*self.lead_shape):
                for box in grid_slices(lv.shape, lv.chunks):
                    if occupied is not None and not occupied(
                            lead, tuple(slice(b.start * f, b.stop * f) for b, f in zip(box, lv.factor))):
                        continue
                    todo.append(dask.delayed(_downsample_block)(src, target, lead, box, lv.step, self.dtype))
            for i in range(0, len(todo), batch):
                dask.compute(*todo[i:i + batch])

    def write_metadata(self, window: dict[str, float] | list | None = None, extra: dict | None = None) -> None:
        """NGFF multiscales (axes, units, per-level scale + translation, downsampling type), omero window,
        provenance."""
        datasets = []
        scale = list(self.voxel_size_um)
        trans = [0.0, 0.0, 0.0]
        lead1, lead0 = [1.0] * len(self.lead_axes), [0.0] * len(self.lead_axes)
        datasets.append({"path": "0", "coordinateTransformations": [{"type": "scale", "scale": lead1 + list(scale)}]})
        for level, f in enumerate(self.factors, start=1):
            # A mean over f voxels sits at the centre of the voxels it averages.
            trans = [t + (k - 1) * s / 2 for t, k, s in zip(trans, f, scale)]
            scale = [s * k for s, k in zip(scale, f)]
            datasets.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": lead1 + list(scale)},
                {"type": "translation", "translation": lead0 + list(trans)}]})
        lead = [{"name": "t", "type": "time", **({"unit": self.time_unit} if self.time_unit else {})}
                if ax == "t" else {"name": "c", "type": "channel"} for ax in self.lead_axes]
        axes = lead + [{"name": ax, "type": "space", "unit": self.units} for ax in "zyx"]
        omero = {"channels": self._omero_channels(window),
                 "rdefs": {"model": "greyscale" if "c" not in self.lead_axes else "color", "defaultT": 0,
                           "defaultZ": self.shape[0] // 2}}
        write_multiscales_metadata(self.group, datasets, fmt=self.fmt, axes=axes, name=self.name,
                                   metadata={"omero": omero, "method": "ssai3d_dask.io.pyramid.downsample_mean",
                                             "description": "block mean over each level's factors; integers rounded"})
        attrs = dict(self.group.attrs)
        ms = (attrs["ome"] if "ome" in attrs else attrs)["multiscales"]
        ms[0]["type"] = DOWNSAMPLING_TYPE
        self.group.attrs.update({"ome": attrs["ome"]} if "ome" in attrs else {"multiscales": ms})
        if extra:
            self.group.attrs.update({"ssai3d": extra})

    def _omero_channels(self, window: dict | list | None) -> list[dict]:
        """One omero entry per channel: label, colour, window from that channel's own values."""
        if "c" not in self.lead_axes:
            if window is None:
                window = default_window(self._window_sample(), self.dtype, self._fill())
            return [{"label": self.name, "color": "FFFFFF", "active": True, "coefficient": 1.0, "family": "linear",
                     "inverted": False, "window": window}]
        from ssai3d_dask.io.dataset import PALETTE

        axis = self.lead_axes.index("c")
        n = self.lead_shape[axis]
        windows = window if isinstance(window, list) else None
        if windows is None:
            sample = self._window_sample()
            windows = [default_window(np.take(sample, i, axis=axis), self.dtype, self._fill()) for i in range(n)]
        labels = self.channel_labels or [f"c{i}" for i in range(n)]
        return [{"label": labels[i], "color": PALETTE[i % len(PALETTE)] if n > 1 else "FFFFFF", "active": True,
                 "coefficient": 1.0, "family": "linear", "inverted": False, "window": windows[i]} for i in range(n)]

    def _fill(self) -> float:
        fv = self.level0.fill_value
        return float(fv) if fv is not None else 0.0

    def _window_sample(self, min_voxels: int = 1 << 20) -> np.ndarray:
        """The coarsest level with at least ``min_voxels`` (bounded memory, little smoothing), else level 0."""
        for level in range(len(self.levels) - 1, -1, -1):
            arr = self.group[str(level)]
            if math.prod(arr.shape) >= min_voxels:
                return arr[...]
        return self.level0[...]

    def finalize(self, window: dict[str, float] | None = None, extra: dict | None = None) -> None:
        self.build_pyramid()
        self.write_metadata(window, extra)


def check_output_apart(out: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output that is, lies inside, or contains an input (``--overwrite`` would delete it)."""
    o = Path(out).resolve()
    for src in inputs:
        if not src or str(src).startswith("<"):
            continue
        i = Path(src).resolve()
        if o == i or i in o.parents or o in i.parents:
            where = "is" if o == i else ("lies inside" if i in o.parents else "contains")
            raise VolumeError(f"output {out} {where} the input {src}; choose an output outside the input "
                              f"(nothing was written)")


def check_output(out: str | Path, overwrite: bool, resume: bool, inputs: Sequence[str | Path] = ()) -> None:
    """Before any work: the output lies apart from the inputs, and exists only with --overwrite or --resume."""
    check_output_apart(out, inputs)
    if Path(out).suffix.lower() in (".tif", ".tiff", ".btf", ".tf8"):
        raise VolumeError(f"output {out} names a TIFF file, but the output is a multiscale OME-Zarr (a folder); "
                          f"give a name ending in .ome.zarr, e.g. {Path(out).with_suffix('.ome.zarr')}")
    check_creatable(out)
    if Path(out).exists() and not (overwrite or resume):
        raise VolumeError(f"output {out} already exists; pass --overwrite to replace it or --resume to finish it")


def _downsample_block(src: zarr.Array, target: zarr.Array, lead: tuple, box: Sequence[slice], step: Sequence[int],
                      dtype: np.dtype) -> None:
    spatial = src.shape[len(lead):]
    src_box = tuple(slice(b.start * f, min(b.stop * f, n)) for b, f, n in zip(box, step, spatial))
    target[tuple(lead) + tuple(box)] = downsample_mean(src[tuple(lead) + src_box], step, dtype)


def _cast_fill(value: float, dtype: np.dtype):
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return int(np.clip(round(float(value)), info.min, info.max))
    return float(value)


def mark_done(path: str | Path, block_id: str, record: dict) -> None:
    """Record a finished region atomically (temporary file, then rename), after all its data is written."""
    write_json(Path(path) / DONE_DIR / f"{block_id}.json", record, indent=None)


def write_region_levels(path: str | Path, levels: Sequence[Level], core: Sequence[slice], data: np.ndarray,
                        block_id: str, record: dict, lead: tuple = ()) -> None:
    """Write one restored region at level 0 and every task-written level below it, then record it done.

    ``lead`` indexes the (t, c) slice in an output with such axes. Runs on any worker; the region's
    chunks and shards at every level belong to it alone.
    """
    dtype = np.dtype(data.dtype)
    for i, lv in enumerate(levels):
        if not lv.in_task:
            break
        if i:
            data = downsample_mean(data, lv.step, dtype)
        cached_array(Path(path) / str(i), "r+")[tuple(lead) + lv.box(core)] = data  # opened once per worker
    mark_done(path, block_id, record)


def write_multiscale(data: da.Array | np.ndarray, path: str | Path, voxel_size_um: Sequence[float],
                     chunks: Sequence[int] = (64, 128, 128), overwrite: bool = False, name: str = "image",
                     ngff_version: str = "0.5", extra: dict | None = None, compute: bool = True):
    """Write a (z, y, x) array as a multiscale OME-Zarr.

    Level 0 is written by chunk-aligned ``da.store`` (each dask block owns whole
    zarr chunks); then the pyramid and the metadata. With ``compute=False`` the
    level-0 store is returned as a delayed job and the caller must call
    ``writer.finalize()`` after computing it; the writer is returned too.
    """
    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    if arr.ndim != 3:
        raise VolumeError(f"write_multiscale needs (z, y, x) data, got {arr.ndim}D")
    writer = MultiscaleWriter(path, arr.shape, arr.dtype, voxel_size_um, chunks, overwrite=overwrite,
                              ngff_version=ngff_version, name=name)
    arr = arr.rechunk(writer.chunks)
    job = da.store(arr, writer.level0, lock=False, compute=False)
    if not compute:
        return job, writer
    job.compute()
    writer.mark_done("all", {"shape": list(arr.shape)})
    writer.finalize(extra=extra)
    return writer
