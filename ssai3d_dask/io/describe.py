"""``ssai3d info``: what a volume is, from metadata alone."""

from __future__ import annotations

import os
from pathlib import Path

import zarr

from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.io.volume import LIGHTSHEET_SUFFIXES, open_volume, open_zarr_node, read_multiscales


def disk_usage_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def describe(path: str | os.PathLike, voxel_size_um=None, channel=None, time=None, level: int = 0) -> dict:
    """Shape, dtype, chunks, voxel size, anisotropy, pyramid levels and size on disk. Reads no voxels."""
    from ssai3d_dask.io.dataset import input_axes

    path = Path(path)
    sizes, labels, _ = input_axes(path, level)
    extra = {}
    if "c" in sizes:
        extra["channels"] = f"{sizes['c']}" + (f" ({', '.join(str(lb) for lb in labels)})" if any(labels) else "")
    if "t" in sizes:
        extra["time points"] = sizes["t"]
    # describe the first slice when the input has several (restore/run process them all)
    vol = open_volume(path, voxel_size_um, channel if channel is not None else (0 if "c" in sizes else None),
                      time if time is not None else (0 if "t" in sizes else None), level)
    geom = isotropic_geometry(vol.shape, vol.voxel_size_um, strict=False)
    levels = [list(vol.shape)]
    if path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zattrs", ".zgroup")):
        node = open_zarr_node(str(path))
        ms = read_multiscales(node) if isinstance(node, zarr.Group) else None
        if ms:
            levels = [list(node[d["path"]].shape) for d in ms["datasets"]]
    size = disk_usage_bytes(path)
    if path.is_file() and path.suffix.lower() in LIGHTSHEET_SUFFIXES:  # BigDataViewer, Imaris: pyramid, container
        from ssai3d_dask.io.lightsheet import read_image

        img = read_image(path)
        c = img.channels[vol.selection.get("channel", 0)]
        levels = [list(img.shape(c, lv)) for lv in range(len(img.levels[c]))]
        size = disk_usage_bytes(Path(img.path)) + (path.stat().st_size if Path(img.path) != path.resolve() else 0)
    return {
        "path": str(path),
        "shape (z, y, x)": list(vol.shape),
        "dtype": str(vol.dtype),
        "chunks": [int(c[0]) for c in vol.data.chunks],
        "voxel size (um)": list(vol.voxel_size_um),
        "anisotropy dz/dx": round(vol.anisotropy, 4),
        "isotropic shape": list(geom.out_shape),
        "isotropic voxel (um)": list(geom.out_voxel_um),
        "levels": levels,
        "selection": vol.selection,
        **extra,
        "uncompressed": _human(vol.nbytes),
        "on disk": _human(size),
    }
