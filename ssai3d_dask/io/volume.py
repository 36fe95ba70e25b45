"""Lazy volume readers: OME-Zarr, Zarr, TIFF/BigTIFF and folders of TIFF planes.

``open_volume`` reads metadata only; voxel data is read when the returned dask
array is computed, one chunk (TIFF: one page or tile) at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.source import DaskSource, PlaneFolderSource, Source, TiffSource, ZarrSource
from ssai3d_dask.io.tiff import TIFF_SUFFIXES, UNIT_TO_UM, TiffPages, list_planes, tiff_image_count, tiff_voxel

logger = logging.getLogger(__name__)

SPATIAL = ("z", "y", "x")
#: Suffixes of the light-sheet inputs (:mod:`ssai3d_dask.io.lightsheet`: BigDataViewer XML/HDF5, Imaris).
LIGHTSHEET_SUFFIXES = (".xml", ".h5", ".hdf5", ".ims")


@dataclass
class Volume:
    """A lazy 3D image with its physics.

    Attributes
    ----------
    data : dask.array.Array
        Shape (z, y, x).
    voxel_size_um : tuple of float
        (dz, dy, dx) in micrometres.
    source : str
        Where it was read from.
    selection : dict
        Channel, time point and pyramid level chosen from the source.
    """

    data: da.Array
    voxel_size_um: tuple[float, float, float]
    source: str = "<memory>"
    selection: dict[str, Any] = field(default_factory=dict)
    #: A small picklable handle to the same voxels as ``data`` (set by :func:`open_volume`), which Dask
    #: tasks use to read their own crops; None for in-memory volumes.
    reader: Source | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise VolumeError(f"a Volume is 3D (z, y, x); got {self.data.ndim}D data from {self.source}")
        if self.data.dtype.kind not in "uif":
            raise VolumeError(f"{self.source} holds {self.data.dtype} voxels, not intensities; convert it to an "
                              f"integer or float type (e.g. uint16 or float32)")
        if self.data.shape[0] < 2 or min(self.data.shape[1:]) < 2:
            raise VolumeError(f"{self.source} has shape {tuple(self.data.shape)} (z, y, x); a z-stack needs at least "
                              f"2 planes of at least 2 x 2 pixels")
        self.voxel_size_um = validate_voxel_size(self.voxel_size_um, self.source)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def anisotropy(self) -> float:
        """dz / dx: how much coarser z is sampled than x."""
        return self.voxel_size_um[0] / self.voxel_size_um[2]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def source_handle(self) -> Source:
        """What a task needs to read any crop: the file handle, or the dask array itself when in memory."""
        return self.reader if self.reader is not None else DaskSource(self.data)

    @classmethod
    def from_array(cls, array: Any, voxel_size_um: Sequence[float], chunks: Any = "auto",
                   source: str = "<memory>") -> Volume:
        data = array if isinstance(array, da.Array) else da.from_array(np.asarray(array), chunks=chunks)
        return cls(data, tuple(voxel_size_um), source)  # type: ignore[arg-type]


def validate_voxel_size(voxel_size_um: Sequence[float] | None, source: str = "") -> tuple[float, float, float]:
    """Check a (dz, dy, dx) voxel size: three finite positive numbers."""
    if voxel_size_um is None:
        raise VolumeError(
            f"no voxel size known for {source}; pass --voxel-size DZ DY DX (micrometres), e.g. --voxel-size 3 1.63 1.63"
        )
    # 12 significant digits: 0.1 * 3 is stored and shown as 0.3, not 0.30000000000000004.
    vs = tuple(float(f"{float(v):.12g}") for v in voxel_size_um)
    if len(vs) != 3:
        raise VolumeError(f"voxel size needs 3 values (dz, dy, dx) in micrometres, got {len(vs)}: {vs}")
    if not all(math.isfinite(v) for v in vs):
        raise VolumeError(f"voxel size {vs} has NaN or Inf; give finite sizes in micrometres")
    if not all(v > 0 for v in vs):
        raise VolumeError(f"voxel size {vs} must be positive (micrometres)")
    return vs  # type: ignore[return-value]


def open_volume(
    path: str | Path,
    voxel_size_um: Sequence[float] | None = None,
    channel: int | None = None,
    time: int | None = None,
    level: int = 0,
    dataset: str | None = None,
) -> Volume:
    """Open a 3D volume lazily.

    Parameters
    ----------
    path : str or Path
        OME-Zarr image, Zarr array or group, TIFF/BigTIFF file, a folder of 2D TIFF planes, a BigDataViewer
        dataset (its .xml, or the .h5 beside it) or an Imaris .ims file (:mod:`ssai3d_dask.io.lightsheet`).
    voxel_size_um : (dz, dy, dx), optional
        Overrides the file's voxel size; required where the file has none.
    channel, time : int, optional
        Selection for data with c / t axes; required when those axes have more than one entry.
    level : int
        Pyramid level of an OME-Zarr, BigDataViewer or Imaris file (0 = full resolution).
    dataset : str, optional
        Array inside a plain Zarr group.

    Returns
    -------
    Volume
        (z, y, x) dask array and voxel size in micrometres. No voxel data is read.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"input not found: {p}; check the path")
    if p.is_dir() and (_is_zarr(p)):
        vol = _open_zarr(p, voxel_size_um, channel, time, level, dataset)
    elif p.is_dir():
        vol = _open_tiff_folder(p, voxel_size_um)
    elif p.suffix.lower() in TIFF_SUFFIXES:
        vol = _open_tiff(p, voxel_size_um, channel, time)
    elif p.suffix.lower() in LIGHTSHEET_SUFFIXES:
        from ssai3d_dask.io.lightsheet import open_lightsheet

        vol = open_lightsheet(p, voxel_size_um, channel, time, level)
    else:
        raise VolumeError(
            f"unsupported input {p.name!r}; give an OME-Zarr/Zarr folder, a .tif/.tiff file, a folder of TIFF "
            f"planes, a BigDataViewer .xml (HDF5 or N5) or an Imaris .ims file"
        )
    logger.debug("opened %s: shape %s %s, voxel %s um", p, vol.shape, vol.dtype, vol.voxel_size_um)
    return vol


def _is_zarr(p: Path) -> bool:
    return any((p / name).exists() for name in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def _select(arr: da.Array, axes: str, channel: int | None, time: int | None,
            source: str) -> tuple[da.Array, dict[str, Any], tuple[tuple[int, int], ...]]:
    """Reduce data with axes like 'tczyx' to (z, y, x), applying channel/time selection.

    Returns the (z, y, x) array, the selection by name, and the (axis position, index) pairs applied.
    """
    axes = axes.lower()
    selection: dict[str, Any] = {}
    index: list[Any] = []
    for i, ax in enumerate(axes):
        n = arr.shape[i]
        if ax in SPATIAL:
            index.append(slice(None))
            continue
        if ax not in "ct" and n > 1:  # e.g. TIFF samples: no option selects them
            hint = ""
            if ax == "s" and n <= 4:  # tifffile stores a (3 or 4, y, x) array as RGB(A) with separate planes
                hint = (f" (if these are {n} z planes, not colour samples, write them with "
                        f"tifffile.imwrite(path, data, photometric='minisblack'))")
            raise VolumeError(
                f"{source} has {n} entries along axis {ax!r} (samples per pixel, e.g. RGB), which ssai3d "
                f"cannot select; save one grey channel as a (z, y, x) stack{hint}"
            )
        want = {"c": channel, "t": time}.get(ax)
        flag = {"c": "--channel", "t": "--time"}.get(ax)
        if want is None:
            if n == 1:
                index.append(0)
                continue
            raise VolumeError(
                f"{source} has {n} entries along axis {ax!r}; choose one with {flag} N (0..{n - 1})"
            )
        if not 0 <= want < n:
            raise VolumeError(f"{flag} {want} out of range for {source}: choose 0..{n - 1}")
        index.append(int(want))
        selection[{"c": "channel", "t": "time"}.get(ax, ax)] = int(want)
    for ax, want, flag in (("c", channel, "--channel"), ("t", time, "--time")):
        if want is not None and ax not in axes:
            raise VolumeError(f"{flag} {want} given, but {source} has no {'channel' if ax == 'c' else 'time'} axis "
                              f"(axes {axes!r}); leave {flag} out")
    missing = [ax for ax in SPATIAL if ax not in axes]
    if missing:
        got = "".join(ax for ax in axes if ax in SPATIAL)
        raise VolumeError(
            f"{source} is not a 3D volume (spatial axes {got!r}, missing {''.join(missing)!r}); "
            f"ssai3d needs a z-stack"
        )
    out = arr[tuple(index)]
    kept = [ax for ax in axes if ax in SPATIAL]
    out = out.transpose([kept.index(ax) for ax in SPATIAL])
    fixed = tuple((i, int(ix)) for i, ix in enumerate(index) if not isinstance(ix, slice))
    return out, selection, fixed


def _voxel_or_error(file_voxel: dict[str, float | None], override, source: str) -> tuple[float, float, float]:
    if override is not None:
        return validate_voxel_size(override, source)
    if any(file_voxel.get(ax) is None for ax in SPATIAL):
        return validate_voxel_size(None, source)
    return validate_voxel_size([file_voxel[ax] for ax in SPATIAL], source)  # type: ignore[misc]


# --- Zarr / OME-Zarr -------------------------------------------------------------------------


def read_multiscales(group: zarr.Group) -> dict | None:
    """The first ``multiscales`` entry of an OME-Zarr group (NGFF 0.4 or 0.5), or None."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales")
    return ms[0] if ms else None


def checked_datasets(p: Path, node: zarr.Group, ms: dict) -> list[dict]:
    """The multiscales' datasets, each with a path that exists in the store."""
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) and "path" in d for d in datasets):
        raise VolumeError(f"{p}: the OME-Zarr multiscales metadata lists no datasets (each with a path); the "
                          f"file is damaged or not NGFF; open an array inside it as {p}/PATH with --voxel-size")
    for d in datasets:
        if d["path"] not in node:
            raise VolumeError(f"{p}: the multiscales metadata names dataset {d['path']!r}, which does not exist "
                              f"in the store; the file is incomplete (was its writing interrupted?)")
    return datasets


def open_zarr_node(p: str | Path) -> zarr.Group | zarr.Array:
    """The Zarr group or array at ``p`` (read-only), or a one-line error naming what is broken."""
    import json

    try:
        return zarr.open(str(p), mode="r")
    except json.JSONDecodeError as exc:  # zarr gives the parser's words only: name the file
        def broken(f: Path) -> bool:
            try:
                json.loads(f.read_text())
                return False
            except ValueError:
                return True

        meta = [n for n in ("zarr.json", ".zattrs", ".zgroup", ".zarray") if (Path(p) / n).is_file()
                and broken(Path(p) / n)]
        raise VolumeError(f"cannot open {p} as Zarr: {', '.join(meta) or 'its metadata'} is not valid JSON ({exc}); "
                          f"restore that file from a backup or rewrite the store") from None
    except Exception as exc:  # zarr raises several types for unreadable stores
        raise VolumeError(f"cannot open {p} as Zarr ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc


def _open_zarr(p: Path, voxel_override, channel, time, level, dataset) -> Volume:
    node = open_zarr_node(p)
    source = str(p)
    if isinstance(node, zarr.Array):
        arr = da.from_zarr(node)
        axes = "zyx" if arr.ndim == 3 else "tczyx"[-arr.ndim:]
        data, sel, fixed = _select(arr, axes, channel, time, source)
        return Volume(data, _voxel_or_error({}, voxel_override, source), source, sel,
                      ZarrSource(str(p.resolve()), axes, fixed))
    ms = read_multiscales(node)
    if ms is None:
        arrays = sorted(name for name, _ in node.arrays())
        if dataset is None:
            if len(arrays) != 1:
                raise VolumeError(
                    f"{p} is a Zarr group without OME-Zarr metadata holding arrays {arrays or '(none)'}; "
                    f"name one as {p}/NAME"
                )
            dataset = arrays[0]
        return _open_zarr(p / dataset, voxel_override, channel, time, 0, None)
    datasets = checked_datasets(p, node, ms)
    if not 0 <= level < len(datasets):
        raise VolumeError(f"--level {level} out of range: {p} has levels 0..{len(datasets) - 1}")
    ds = datasets[level]
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"[-node[ds["path"]].ndim:]]
    axes = "".join(a["name"] if isinstance(a, dict) else a for a in axes_meta)
    voxel: dict[str, float | None] = dict(ngff_voxel_size_um(p, ms, ds, axes_meta))
    arr = da.from_zarr(node[ds["path"]])
    data, sel, fixed = _select(arr, axes, channel, time, source)
    sel["level"] = level
    root = p.resolve()
    reader = ZarrSource(str(root / ds["path"]), axes, fixed, tuple(str(root / d["path"]) for d in datasets), level,
                        ms.get("type"))
    return Volume(data, _voxel_or_error(voxel, voxel_override, source), source, sel, reader)


def ngff_voxel_size_um(p: Path, ms: dict, ds: dict, axes_meta: list) -> dict[str, float]:
    """Voxel size (um) of dataset ``ds`` along each spatial axis, from the NGFF scales and axis units."""
    voxel = {}
    for ax_meta, s in zip(axes_meta, _scale_of(ms, ds, len(axes_meta))):
        if not isinstance(ax_meta, dict) or ax_meta.get("name") not in SPATIAL:
            continue
        factor = UNIT_TO_UM.get(str(ax_meta.get("unit", "micrometer")).lower())
        if factor is None:
            raise VolumeError(f"{p}: unknown unit {ax_meta.get('unit')!r} on axis {ax_meta['name']}; "
                              f"pass --voxel-size in micrometres")
        voxel[ax_meta["name"]] = float(s) * factor
    return voxel


def _scale_of(ms: dict, ds: dict, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for transforms in (ms.get("coordinateTransformations", []), ds.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                scale = [a * b for a, b in zip(scale, t["scale"])]
    return scale


# --- TIFF ------------------------------------------------------------------------------------

def _open_tiff(p: Path, voxel_override, channel, time) -> Volume:
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
    except Exception as exc:  # tifffile raises TiffFileError and others
        raise VolumeError(f"cannot read {p} as TIFF ({exc})") from exc
    with tif:
        announced = tiff_image_count(tif)
        if announced is not None and announced > len(tif.pages):
            raise VolumeError(f"{p} looks truncated: its metadata announces {announced} images, the file holds "
                              f"{len(tif.pages)}; copy or export it again")
        if not tif.series:
            raise VolumeError(f"{p} holds no images (a TIFF header without pages: an aborted save?); "
                              f"export the stack again")
        series = tif.series[0]
        axes = series.axes.lower().replace("q", "z").replace("i", "z")
        if axes.count("z") > 1:
            raise VolumeError(f"{p}: ambiguous TIFF axes {series.axes!r}; save it as a (z, y, x) stack")
        if len(axes) < 2 or axes[-2:] != "yx":
            raise VolumeError(f"{p}: TIFF axes {series.axes!r} do not end in YX (e.g. RGB samples); "
                              f"save one grey channel as a (z, y, x) stack")
        voxel = tiff_voxel(tif)
        shape, dtype = tuple(series.shape), series.dtype
    pages = TiffPages(p, shape, dtype)
    arr = da.from_array(pages, chunks=(1,) * (len(shape) - 2) + tuple(shape[-2:]),
                        meta=np.empty((0,) * len(shape), dtype))
    data, sel, fixed = _select(arr, axes, channel, time, str(p))
    reader = TiffSource(str(p.resolve()), tuple(shape), np.dtype(dtype).str, axes, fixed)
    return Volume(data, _voxel_or_error(voxel, voxel_override, str(p)), str(p), sel, reader)


def _open_tiff_folder(p: Path, voxel_override) -> Volume:
    import tifffile

    files = list_planes(p)
    if not files:
        raise VolumeError(f"{p} is a folder with neither Zarr metadata nor .tif planes; give a volume path")
    with tifffile.TiffFile(files[0]) as tif:
        page = tif.series[0]
        shape, dtype = page.shape, page.dtype
        voxel = tiff_voxel(tif)
    if len(shape) != 2:
        raise VolumeError(f"{files[0].name} is not a 2D plane (shape {shape}); a folder must hold one plane per file")
    if len(files) < 2:
        raise VolumeError(f"{p} holds a single plane; a z-stack needs at least 2 planes")
    for f in files[1:]:  # headers only: a plane of another shape or type would otherwise fail deep inside a task
        try:
            with tifffile.TiffFile(f) as tif:
                other = (tif.series[0].shape, tif.series[0].dtype)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise VolumeError(f"cannot read plane {f.name} of {p} as TIFF ({str(exc).splitlines()[0]})") from None
        if other != (shape, dtype):
            raise VolumeError(f"plane {f.name} of {p} is {other[0]} {other[1]}, the first plane {files[0].name} is "
                              f"{shape} {dtype}; all planes of a stack must have one shape and type")
    planes = [da.from_delayed(dask.delayed(tifffile.imread)(f), shape, dtype) for f in files]
    data = da.stack(planes)
    reader = PlaneFolderSource(str(p.resolve()), tuple(shape), len(files), np.dtype(dtype).str)
    return Volume(data, _voxel_or_error(voxel, voxel_override, str(p)), str(p), {"planes": len(files)}, reader)
