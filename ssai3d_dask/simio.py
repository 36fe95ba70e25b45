"""Writing simulations to disk (OME-Zarr or TIFF) with their parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import VolumeError
from .omezarr import write_multiscale
from .simulate import Simulation

TIFF = (".tif", ".tiff")


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint16":
        return np.round(np.clip(a, 0, 1) * 65535).astype(np.uint16)
    return a.astype(np.float32)


def write_simulation(sim: Simulation, out: str | Path, dtype: str = "float32", chunks=(64, 128, 128),
                     overwrite: bool = False) -> list[Path]:
    """Write raw, truth and parameters; returns the paths written.

    ``out`` ending in .tif/.tiff: raw there, truth beside as ``*_truth.tif``,
    parameters as ``*.json`` (ImageJ voxel metadata in both TIFFs). Otherwise
    ``out`` is a folder with ``raw.ome.zarr``, ``truth.ome.zarr``, ``simulation.json``.
    """
    import tifffile

    out = Path(out)
    meta = sim.describe() | {"dtype": dtype, "intensity_scale": 65535 if dtype == "uint16" else 1.0}
    if out.suffix.lower() in TIFF:
        paths = [out, out.with_name(out.stem + "_truth" + out.suffix), out.with_suffix(".json")]
        existing = [p for p in paths if p.exists()]
        if existing and not overwrite:
            raise VolumeError(f"output {existing[0]} already exists; pass --overwrite to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        for p, arr, vox in ((paths[0], sim.raw, sim.raw_voxel_size_um), (paths[1], sim.truth, sim.voxel_size_um)):
            tifffile.imwrite(p, _cast(arr, dtype), imagej=True, resolution=(1 / vox[2], 1 / vox[1]),
                             metadata={"spacing": vox[0], "unit": "um", "axes": "ZYX"})
        paths[2].write_text(json.dumps(meta, indent=2))
        return paths
    if out.exists() and not overwrite:
        raise VolumeError(f"output {out} already exists; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    raw = write_multiscale(_cast(sim.raw, dtype), out / "raw.ome.zarr", sim.raw_voxel_size_um, chunks,
                           overwrite=True, name="raw", extra={"simulation": meta}).path
    truth = write_multiscale(_cast(sim.truth, dtype), out / "truth.ome.zarr", sim.voxel_size_um, chunks,
                             overwrite=True, name="truth", extra={"simulation": meta}).path
    (out / "simulation.json").write_text(json.dumps(meta, indent=2))
    return [raw, truth, out / "simulation.json"]
