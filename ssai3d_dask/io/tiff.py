"""TIFF access shared by the readers and the workers' source handles: lazy page-by-page series, plane folders,
voxel sizes from OME-XML or ImageJ metadata."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
#: Length units (OME, ImageJ and NGFF spellings) in micrometres.
UNIT_TO_UM = {
    "micrometer": 1.0, "micron": 1.0, "um": 1.0, "\u00b5m": 1.0, "\\u00b5m": 1.0,
    "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3, "meter": 1e6, "m": 1e6,
    "centimeter": 1e4, "cm": 1e4, "angstrom": 1e-4,
}
SPATIAL = ("z", "y", "x")


def tiff_voxel(tif) -> dict[str, float | None]:
    """Voxel size (um) from OME-XML or ImageJ metadata, None where unknown."""
    voxel: dict[str, float | None] = {"z": None, "y": None, "x": None}
    if tif.is_ome and tif.ome_metadata:
        for ax in SPATIAL:
            m = re.search(rf'PhysicalSize{ax.upper()}="([0-9.eE+-]+)"', tif.ome_metadata)
            u = re.search(rf'PhysicalSize{ax.upper()}Unit="([^"]+)"', tif.ome_metadata)
            if m:
                voxel[ax] = float(m.group(1)) * UNIT_TO_UM.get((u.group(1) if u else "µm").lower(), 1.0)
        return voxel
    ij = tif.imagej_metadata or {}
    unit = UNIT_TO_UM.get(str(ij.get("unit", "")).lower()) if ij.get("unit") else None
    page = tif.pages[0]
    for ax, tag in (("x", "XResolution"), ("y", "YResolution")):
        res = page.tags.get(tag)
        if res is not None and unit is not None:
            num, den = res.value
            if num > 0 and (num, den) != (1, 1):
                voxel[ax] = den / num * unit
    if "spacing" in ij and unit is not None:
        voxel["z"] = float(ij["spacing"]) * unit
    return voxel


def tiff_image_count(tif) -> int | None:
    """Images the file's ImageJ or OME metadata announces (None when it says nothing)."""
    if tif.is_imagej and tif.imagej_metadata:
        return int(tif.imagej_metadata.get("images", 1))
    if tif.is_ome and tif.ome_metadata:
        sizes = [re.search(rf'Size{a}="(\d+)"', tif.ome_metadata) for a in "ZCT"]
        if all(sizes):
            return int(np.prod([int(m.group(1)) for m in sizes]))
    return None


class TiffPages:
    """A picklable, lazy (leading..., Y, X) view of a TIFF series that reads one page per access.

    Only the path, shape and dtype travel to Dask workers; each process opens
    the file once and reads pages under a lock. (tifffile's zarr store holds an
    open file handle, which a distributed scheduler cannot ship.)
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._tif = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype.str}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Path(state["path"]), state["shape"], np.dtype(state["dtype"]))

    def __dask_tokenize__(self):
        return ("TiffPages", self.path, Path(self.path).stat().st_mtime_ns, self.shape)

    def __getitem__(self, index) -> np.ndarray:
        import tifffile

        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        lead_shape = self.shape[:-2]
        lead = [range(*ix.indices(n)) if isinstance(ix, slice) else [ix] for ix, n in zip(index[:-2], lead_shape)]
        yx = index[-2:]
        planes = []
        with self._lock:
            if self._tif is None:
                self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            for combo in np.ndindex(*[len(r) for r in lead]):
                page = int(np.ravel_multi_index([r[i] for r, i in zip(lead, combo)], lead_shape)) if lead_shape else 0
                planes.append(series.asarray(key=page)[yx])
        out = np.stack(planes) if planes else np.empty((0,), self.dtype)
        keep = [len(r) for r, ix in zip(lead, index[:-2]) if isinstance(ix, slice)]
        return out.reshape(*keep, *planes[0].shape) if planes else out


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_planes(p: Path) -> list[Path]:
    """The TIFF planes of a folder in natural sort order (plane2 before plane10)."""
    return sorted((f for f in p.iterdir() if f.suffix.lower() in TIFF_SUFFIXES), key=lambda f: _natural_key(f.name))
