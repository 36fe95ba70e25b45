"""Small picklable handles to a volume's bytes, so a Dask task can read its own crop where it runs.

A task of :func:`ssai3d_dask.restoration.pipeline.restore` carries one of these (a few hundred bytes: a path, the
axes, the channel/time selection) instead of a slice of a dask graph, so its size does not grow with
the volume or the number of regions, and input bytes are read on the worker that uses them.

Each source also answers, without reading voxels, which storage units (chunks, or shards when the
store is sharded) were ever written (:meth:`ZarrSource.written_units`: a listing of the store; zarr
does not store chunks that hold only the fill value), and offers a coarse pyramid level when the input
is a multiscale OME-Zarr (:meth:`ZarrSource.coarse`). Both find the tissue in a mostly empty volume.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.tiff import TiffPages, list_planes

logger = logging.getLogger(__name__)

Crop = tuple[slice, slice, slice]
SPATIAL = "zyx"

_OPEN: dict = {}
_OPEN_LOCK = threading.Lock()


def _cached(key, opener):
    """One open handle per process and key (workers reuse it for every task)."""
    with _OPEN_LOCK:
        if key not in _OPEN:
            if len(_OPEN) > 256:
                _OPEN.clear()
            _OPEN[key] = opener()
        return _OPEN[key]


def cached_array(path: str | Path, mode: str = "r"):
    """A zarr array opened once per process and mode. The key includes its metadata file's mtime and inode,
    so an array re-created at the same path (``--overwrite``) is opened afresh."""
    import zarr

    p = Path(path)
    meta = p / "zarr.json" if (p / "zarr.json").exists() else p / ".zarray"
    st = meta.stat() if meta.exists() else None
    stamp = (st.st_mtime_ns, st.st_ino) if st else (0, 0)
    return _cached(("zarr", str(p), mode, stamp), lambda: zarr.open_array(str(p), mode=mode))


@dataclass(frozen=True)
class Coarse:
    """A coarse view of a volume: ``data`` (z, y, x) with ``factor`` input voxels per coarse voxel per axis."""

    data: np.ndarray
    factor: tuple[float, float, float]
    level: int
    downsampling: str | None


class Source:
    """A (z, y, x) volume that can read any crop. Subclasses are small and picklable (except :class:`DaskSource`)."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    #: True when pickling the handle is cheap (a path), False when it carries the data (scatter it once).
    is_small = True

    def read(self, crop: Crop) -> np.ndarray:
        raise NotImplementedError

    @property
    def fill_value(self) -> float:
        return 0.0

    def storage_unit(self) -> tuple[int, int, int] | None:
        """Shape (z, y, x) of the unit a store writes at once (a chunk or a shard), None when unknown."""
        return None

    def written_units(self) -> np.ndarray | None:
        """Boolean grid over storage units: True where the store holds bytes. None when it cannot tell."""
        return None

    def coarse(self, max_voxels: int) -> Coarse | None:
        """The finest pyramid level with at most ``max_voxels`` voxels, read whole; None without a pyramid."""
        return None


class FileSource(Source):
    """A source whose handle names its voxel type (``dtype_str``) and opens the file where it runs."""

    dtype_str: str

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return np.dtype(self.dtype_str)


def _spatial_index(axes: str, fixed: dict[int, int], crop: Crop) -> tuple:
    it = iter(crop)
    return tuple(fixed[i] if i in fixed else next(it) for i, _ in enumerate(axes))


def _to_zyx(block: np.ndarray, axes: str, fixed: dict[int, int]) -> np.ndarray:
    kept = [a for i, a in enumerate(axes) if i not in fixed]
    order = [kept.index(a) for a in SPATIAL]
    return block if order == [0, 1, 2] else block.transpose(order)


def _crop_in_array_order(axes: str, fixed: dict[int, int], crop: Crop) -> Crop:
    """``crop`` is given in (z, y, x); the array may store its spatial axes in another order."""
    kept = [a for i, a in enumerate(axes) if i not in fixed]
    return tuple(crop[SPATIAL.index(a)] for a in kept)  # type: ignore[return-value]


@dataclass(frozen=True)
class ZarrSource(Source):
    """A Zarr array (v2 or v3, plain or one level of an OME-Zarr), with a fixed channel/time selection.

    Attributes
    ----------
    path : str
        Absolute path of the array.
    axes : str
        Axis names of the array, e.g. ``"tczyx"``.
    fixed : tuple of (axis position, index)
        Non-spatial axes and the index chosen along each.
    levels : tuple of str
        Absolute paths of all pyramid levels (finest first) when the array is one level of an OME-Zarr.
    level : int
        Which of ``levels`` ``path`` is.
    downsampling : str or None
        The pyramid's downsampling method as recorded in the multiscales metadata (``type``).
    """

    path: str
    axes: str
    fixed: tuple[tuple[int, int], ...] = ()
    levels: tuple[str, ...] = ()
    level: int = 0
    downsampling: str | None = None

    def _array(self, path: str | None = None):
        return cached_array(path or self.path)

    @property
    def _fixed(self) -> dict[int, int]:
        return dict(self.fixed)

    @property
    def shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        shp = self._array().shape
        kept = {a: shp[i] for i, a in enumerate(self.axes) if i not in self._fixed}
        return tuple(int(kept[a]) for a in SPATIAL)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return np.dtype(self._array().dtype)

    @property
    def fill_value(self) -> float:
        fv = self._array().fill_value
        return float(fv) if fv is not None else 0.0

    def read(self, crop: Crop) -> np.ndarray:
        arr = self._array()
        index = _spatial_index(self.axes, self._fixed, _crop_in_array_order(self.axes, self._fixed, crop))
        return _to_zyx(np.asarray(arr[index]), self.axes, self._fixed)

    def _unit_array_order(self) -> tuple[int, ...]:
        arr = self._array()
        return tuple(int(s) for s in (arr.shards or arr.chunks))

    def storage_unit(self) -> tuple[int, int, int]:
        unit = self._unit_array_order()
        by_axis = {a: unit[i] for i, a in enumerate(self.axes)}
        return tuple(by_axis[a] for a in SPATIAL)  # type: ignore[return-value]

    def written_units(self) -> np.ndarray | None:
        """List the store once and mark every storage unit (chunk or shard) that has bytes."""
        arr = self._array()
        unit = self._unit_array_order()
        grid = [-(-s // u) for s, u in zip(arr.shape, unit)]
        try:
            keys = list_array_keys(arr)
        except Exception as exc:  # a store that cannot list (e.g. some HTTP stores): assume everything written
            logger.info("cannot list %s (%s); treating every chunk as written", self.path, exc)
            return None
        prefix, sep = _key_format(arr)
        coords = []
        for key in keys:
            if not key.startswith(prefix):
                continue
            parts = key[len(prefix):].split(sep)
            if len(parts) == len(grid) and all(p.isdigit() for p in parts):
                coords.append([int(p) for p in parts])
        fixed = self._fixed
        mask = np.zeros([grid[i] for i, _ in enumerate(self.axes) if i not in fixed], bool)
        if coords:
            c = np.asarray(coords)
            keep = np.ones(len(c), bool)
            for i, idx in fixed.items():
                keep &= c[:, i] == idx // unit[i]
            c = c[keep][:, [i for i in range(len(grid)) if i not in fixed]]
            c = c[np.all(c < np.asarray(mask.shape), axis=1)]
            mask[tuple(c.T)] = True
        return _to_zyx(mask, self.axes, fixed)

    def coarse(self, max_voxels: int) -> Coarse | None:
        if len(self.levels) <= self.level + 1:
            return None
        fixed = self._fixed
        full = self.shape
        for lv in range(self.level + 1, len(self.levels)):
            arr = self._array(self.levels[lv])
            spatial = [s for i, s in enumerate(arr.shape) if i not in fixed]
            if int(np.prod(spatial)) <= max_voxels:
                index = _spatial_index(self.axes, fixed, (slice(None),) * 3)  # type: ignore[arg-type]
                data = _to_zyx(np.asarray(arr[index]), self.axes, fixed)
                factor = tuple(f / max(c, 1) for f, c in zip(full, data.shape))
                return Coarse(data, factor, lv, self.downsampling)  # type: ignore[arg-type]
        return None


def _key_format(arr) -> tuple[str, str]:
    """(prefix, separator) of chunk keys relative to the array: ``c/0/1/2`` (v3 default), ``0.1.2`` (v2)."""
    meta = arr.metadata
    if getattr(meta, "zarr_format", 3) == 2:
        return "", getattr(meta, "dimension_separator", ".") or "."
    enc = meta.chunk_key_encoding
    sep = getattr(enc, "separator", "/")
    return ("c" + sep, sep) if getattr(enc, "name", "default") == "default" else ("", sep)


def list_array_keys(arr) -> list[str]:
    """Keys under a zarr array, relative to it (one listing of the store; no per-chunk requests)."""
    from zarr.core.sync import sync

    store, path = arr.store_path.store, arr.store_path.path

    async def _ls():
        return [k async for k in store.list_prefix(path)]

    prefix = path.rstrip("/") + "/" if path else ""
    return [k[len(prefix):] if k.startswith(prefix) else k for k in sync(_ls())]


@dataclass(frozen=True)
class TiffSource(FileSource):
    """One series of a TIFF/BigTIFF file, read page by page (:class:`ssai3d_dask.io.tiff.TiffPages`)."""

    path: str
    series_shape: tuple[int, ...]
    dtype_str: str
    axes: str
    fixed: tuple[tuple[int, int], ...] = ()

    def _pages(self):

        stamp = os.stat(self.path).st_mtime_ns
        return _cached(("tiff", self.path, stamp),
                       lambda: TiffPages(Path(self.path), self.series_shape, np.dtype(self.dtype_str)))

    @property
    def shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        fixed = dict(self.fixed)
        kept = {a: self.series_shape[i] for i, a in enumerate(self.axes) if i not in fixed}
        return tuple(int(kept[a]) for a in SPATIAL)  # type: ignore[return-value]

    def read(self, crop: Crop) -> np.ndarray:
        fixed = dict(self.fixed)
        index = _spatial_index(self.axes, fixed, _crop_in_array_order(self.axes, fixed, crop))
        return _to_zyx(np.asarray(self._pages()[index]), self.axes, fixed)


@dataclass(frozen=True)
class PlaneFolderSource(FileSource):
    """A folder of 2D TIFF planes in natural sort order; the worker lists the folder itself (once)."""

    folder: str
    plane_shape: tuple[int, int]
    n_planes: int
    dtype_str: str

    @property
    def shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        return (self.n_planes, *self.plane_shape)  # type: ignore[return-value]

    def _files(self) -> list[Path]:

        return _cached(("planes", self.folder, os.stat(self.folder).st_mtime_ns), lambda: list_planes(Path(self.folder)))

    def read(self, crop: Crop) -> np.ndarray:
        import tifffile

        files = self._files()[crop[0]]
        ny, nx = (len(range(*c.indices(n))) for c, n in zip(crop[1:], self.plane_shape))
        out = np.empty((len(files), ny, nx), self.dtype)
        for i, f in enumerate(files):
            plane = tifffile.imread(f)
            if plane.shape != tuple(self.plane_shape):
                from ssai3d_dask.errors import VolumeError

                raise VolumeError(f"{f} has shape {plane.shape}, the folder's first plane {self.plane_shape}; "
                                  f"all planes must have one shape")
            out[i] = plane[crop[1:]]
        return out


class DaskSource(Source):
    """Any dask array (e.g. an in-memory volume). Carries its graph, so a cluster receives it once (scattered)."""

    is_small = False

    def __init__(self, data) -> None:
        self.data = data

    @property
    def shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return np.dtype(self.data.dtype)

    def read(self, crop: Crop) -> np.ndarray:
        return np.asarray(self.data[tuple(crop)].compute(scheduler="sync"))


def crop_shape(crop: Sequence[slice]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in crop)


def read_checked(source: Source, crop: Crop, what: str) -> np.ndarray:
    """``source.read(crop)``, or a one-line error naming the unreadable storage units (corrupt chunks or
    pages), the input and ``what`` was reading: a region fails with nothing of it written or recorded (the
    output stays resumable) and is not retried, as the same bytes would fail again."""
    try:
        return source.read(crop)
    except MemoryError:
        raise
    except Exception as exc:
        where = getattr(source, "path", None) or "the input"
        unit = source.storage_unit()
        bad = []
        if unit is not None:  # find the unit(s) that fail, one read each
            ranges = [range(s.start // u, -(-s.stop // u)) for s, u in zip(crop, unit)]
            for iz in ranges[0]:
                for iy in ranges[1]:
                    for ix in ranges[2]:
                        box = tuple(slice(i * u, min((i + 1) * u, n))
                                    for i, u, n in zip((iz, iy, ix), unit, source.shape))
                        try:
                            source.read(box)
                        except Exception:
                            bad.append(f"({iz}, {iy}, {ix})")
        which = (f"chunk{'s' if len(bad) > 1 else ''} {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''} "
                 f"(z, y, x index, chunks of {list(unit)})" if bad else f"voxels {[[c.start, c.stop] for c in crop]}")
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VolumeError(f"cannot read {where}: {which} ({what}) failed to decode ({msg}); the data "
                          f"there is damaged: restore it from a backup, then rerun with --resume") from None
