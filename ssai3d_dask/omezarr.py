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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_multiscales_metadata

from .errors import VolumeError

logger = logging.getLogger(__name__)

DONE_DIR = ".ssai3d/done"


def pyramid_factors(shape: Sequence[int], voxel_size_um: Sequence[float], chunks: Sequence[int],
                    max_levels: int = 12) -> list[tuple[int, ...]]:
    """Per-level, per-axis downsampling factors relative to the level above.

    An axis is halved when its voxel is within 1.5x of the finest axis (so
    anisotropic data becomes more isotropic first) and it still spans more
    than one chunk. Levels stop when no axis spans
    more than one chunk.
    """
    shape, vox = list(shape), list(voxel_size_um)
    levels: list[tuple[int, ...]] = []
    while len(levels) < max_levels:
        finest = min(vox)
        f = tuple(2 if (shape[i] > chunks[i] and vox[i] <= 1.5 * finest) else 1 for i in range(len(shape)))
        if all(v == 1 for v in f):
            break
        levels.append(f)
        shape = [max(1, s // k) for s, k in zip(shape, f)]
        vox = [v * k for v, k in zip(vox, f)]
    return levels


def default_window(sample: np.ndarray, dtype: np.dtype) -> dict[str, float]:
    """omero window from robust percentiles (0.1, 99.9) of a sample, with the dtype range."""
    vals = np.asarray(sample, dtype=np.float64).ravel()
    lo, hi = (np.percentile(vals, (0.1, 99.9)) if vals.size else (0.0, 1.0))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        dmin, dmax = float(info.min), float(info.max)
    else:
        dmin, dmax = float(min(lo, vals.min() if vals.size else 0)), float(max(hi, vals.max() if vals.size else 1))
    return {"start": float(lo), "end": float(max(hi, lo + 1e-6)), "min": dmin, "max": dmax}


class MultiscaleWriter:
    """An OME-Zarr image being written: level-0 regions first, then the pyramid, then metadata.

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
        Open an existing output of the same shape/dtype/chunks and keep its records.
    ngff_version : "0.5" (zarr v3) or "0.4" (zarr v2)
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: Any, voxel_size_um: Sequence[float],
                 chunks: Sequence[int], overwrite: bool = False, resume: bool = False,
                 ngff_version: str = "0.5", name: str = "image", units: str = "micrometer") -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size_um = tuple(float(v) for v in voxel_size_um)
        self.chunks = tuple(min(int(c), s) for c, s in zip(chunks, self.shape))
        self.name = name
        self.units = units
        if ngff_version not in ("0.4", "0.5"):
            raise VolumeError(f"NGFF version {ngff_version!r} unsupported; use 0.4 or 0.5")
        self.fmt = FormatV05() if ngff_version == "0.5" else FormatV04()
        self.zarr_format = 3 if ngff_version == "0.5" else 2
        self.factors = pyramid_factors(self.shape, self.voxel_size_um, self.chunks)
        exists = self.path.exists()
        if exists and resume:
            self.group = zarr.open_group(str(self.path), mode="r+")
            lvl0 = self.group["0"]
            if lvl0.shape != self.shape or lvl0.dtype != self.dtype or lvl0.chunks != self.chunks:
                raise VolumeError(
                    f"cannot resume into {self.path}: it holds {lvl0.shape} {lvl0.dtype} chunks {lvl0.chunks}, "
                    f"this run writes {self.shape} {self.dtype} chunks {self.chunks}; use --overwrite"
                )
            return
        if exists and not overwrite:
            raise VolumeError(f"output {self.path} already exists; pass --overwrite to replace it or --resume to finish it")
        if exists:
            shutil.rmtree(self.path)
        self.group = zarr.open_group(str(self.path), mode="w", zarr_format=self.zarr_format)
        shape_l = self.shape
        for level in range(len(self.factors) + 1):
            if level:
                shape_l = tuple(max(1, s // f) for s, f in zip(shape_l, self.factors[level - 1]))
            self.group.create_array(str(level), shape=shape_l, chunks=tuple(min(c, s) for c, s in zip(self.chunks, shape_l)),
                                    dtype=self.dtype, fill_value=0)
        (self.path / DONE_DIR).mkdir(parents=True, exist_ok=True)

    # --- level 0 -------------------------------------------------------------------------
    @property
    def level0(self) -> zarr.Array:
        return self.group["0"]

    def check_region(self, region: Sequence[slice]) -> None:
        """A region must start on chunk boundaries and end on one or at the array edge."""
        for s, c, n in zip(region, self.chunks, self.shape):
            if s.start % c or (s.stop % c and s.stop != n):
                raise VolumeError(f"region {region} is not chunk-aligned (chunks {self.chunks}, shape {self.shape})")

    def write_region(self, region: Sequence[slice], data: np.ndarray, block_id: str,
                     record: dict | None = None) -> None:
        """Write one chunk-aligned region of level 0 and record it done."""
        self.check_region(region)
        self.level0[tuple(region)] = np.asarray(data, dtype=self.dtype)
        self.mark_done(block_id, record or {})

    def mark_done(self, block_id: str, record: dict) -> None:
        mark_done(self.path, block_id, record)

    def done_blocks(self) -> set[str]:
        done = self.path / DONE_DIR
        return {f.stem for f in done.glob("*.json")} if done.exists() else set()

    # --- pyramid and metadata ------------------------------------------------------------
    def build_pyramid(self) -> None:
        """Levels 1.. from the level above by block means (integer data rounded), on the active scheduler."""
        for level, f in enumerate(self.factors, start=1):
            src = da.from_zarr(self.group[str(level - 1)])
            target = self.group[str(level)]
            trimmed = src[tuple(slice(0, (s // k) * k) for s, k in zip(src.shape, f))]
            down = da.coarsen(np.mean, trimmed.astype(np.float32), dict(enumerate(f)), trim_excess=True)
            if np.issubdtype(self.dtype, np.integer):
                down = da.round(down)
            da.store(down.astype(self.dtype).rechunk(target.chunks), target, lock=False)

    def write_metadata(self, window: dict[str, float] | None = None, extra: dict | None = None) -> None:
        """NGFF multiscales (axes, units, per-level scale + translation), omero window, provenance."""
        datasets = []
        scale = list(self.voxel_size_um)
        trans = [0.0, 0.0, 0.0]
        datasets.append({"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]})
        for level, f in enumerate(self.factors, start=1):
            # A mean over f voxels sits at the centre of the voxels it averages.
            trans = [t + (k - 1) * s / 2 for t, k, s in zip(trans, f, scale)]
            scale = [s * k for s, k in zip(scale, f)]
            datasets.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": list(scale)}, {"type": "translation", "translation": list(trans)}]})
        axes = [{"name": ax, "type": "space", "unit": self.units} for ax in "zyx"]
        if window is None:
            window = default_window(self._window_sample(), self.dtype)
        omero = {"channels": [{"label": self.name, "color": "FFFFFF", "active": True, "coefficient": 1.0,
                               "family": "linear", "inverted": False, "window": window}],
                 "rdefs": {"model": "greyscale", "defaultT": 0, "defaultZ": self.shape[0] // 2}}
        write_multiscales_metadata(self.group, datasets, fmt=self.fmt, axes=axes, name=self.name,
                                   metadata={"omero": omero})
        if extra:
            self.group.attrs.update({"ssai3d": extra})

    def _window_sample(self, min_voxels: int = 1 << 20) -> np.ndarray:
        """The coarsest level with at least ``min_voxels`` (bounded memory, little smoothing), else level 0."""
        for level in range(len(self.factors), -1, -1):
            arr = self.group[str(level)]
            if math.prod(arr.shape) >= min_voxels:
                return arr[...]
        return self.level0[...]

    def finalize(self, window: dict[str, float] | None = None, extra: dict | None = None) -> None:
        self.build_pyramid()
        self.write_metadata(window, extra)


def mark_done(path: str | Path, block_id: str, record: dict) -> None:
    """Record a finished region atomically (temporary file, then rename), after its data is written."""
    done = Path(path) / DONE_DIR
    done.mkdir(parents=True, exist_ok=True)
    tmp = done / f".{block_id}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(done / f"{block_id}.json")


def write_level0_region(path: str | Path, region: Sequence[slice], data: np.ndarray, block_id: str,
                        record: dict) -> None:
    """Write one region of level 0 of an existing output (from any worker), then record it done."""
    arr = zarr.open_array(str(Path(path) / "0"), mode="r+")
    arr[tuple(region)] = np.asarray(data, dtype=arr.dtype)
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


def chunk_grid(shape: Sequence[int], region_shape: Sequence[int]) -> list[tuple[slice, ...]]:
    """Regions tiling ``shape`` with ``region_shape`` (the last ones cut at the edge), C order."""
    counts = [math.ceil(s / r) for s, r in zip(shape, region_shape)]
    out = []
    for idx in np.ndindex(*counts):
        out.append(tuple(slice(i * r, min((i + 1) * r, s)) for i, r, s in zip(idx, region_shape, shape)))
    return out
