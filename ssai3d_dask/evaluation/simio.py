"""Writing simulations to disk (OME-Zarr or TIFF) with their parameters."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.files import check_creatable, removed_on_failure, write_json
from ssai3d_dask.io.omezarr import write_multiscale
from ssai3d_dask.evaluation.simulate import Simulation

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
    out = Path(out)
    meta = sim.describe() | {"dtype": dtype, "intensity_scale": 65535 if dtype == "uint16" else 1.0}
    if out.suffix.lower() in TIFF:
        paths = [out, out.with_name(out.stem + "_truth" + out.suffix), out.with_suffix(".json")]
        existing = [p for p in paths if p.exists()]
        if existing and not overwrite:
            raise VolumeError(f"output {existing[0]} already exists; pass --overwrite to replace it")
        check_creatable(out)
        with removed_on_failure(*paths):
            _write_tiffs(sim, paths, dtype, meta)
        return paths
    if out.exists() and not overwrite:
        raise VolumeError(f"output {out} already exists; pass --overwrite to replace it")
    check_creatable(out)
    with removed_on_failure(out):
        out.mkdir(parents=True, exist_ok=True)
        raw = write_multiscale(_cast(sim.raw, dtype), out / "raw.ome.zarr", sim.raw_voxel_size_um, chunks,
                               overwrite=True, name="raw", extra={"simulation": meta}).path
        truth = write_multiscale(_cast(sim.truth, dtype), out / "truth.ome.zarr", sim.voxel_size_um, chunks,
                                 overwrite=True, name="truth", extra={"simulation": meta}).path
        write_json(out / "simulation.json", meta)
    return [raw, truth, out / "simulation.json"]


def _write_tiffs(sim: Simulation, paths: list[Path], dtype: str, meta: dict) -> None:
    import tifffile

    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for p, arr, vox in ((paths[0], sim.raw, sim.raw_voxel_size_um), (paths[1], sim.truth, sim.voxel_size_um)):
        tifffile.imwrite(p, _cast(arr, dtype), imagej=True, resolution=(1 / vox[2], 1 / vox[1]),
                         metadata={"spacing": vox[0], "unit": "um", "axes": "ZYX"})
    write_json(paths[2], meta)


def write_sparse_volume(path: str | Path, shape: Sequence[int], chunks: Sequence[int],
                        voxel_size_um: Sequence[float], n_blocks: int = 4, seed: int = 0, kind: str = "strands",
                        pyramid: bool = True, ngff_version: str = "0.5",
                        background: int = 0) -> list[tuple[slice, ...]]:
    """A huge, mostly unwritten uint16 OME-Zarr: metadata for ``shape`` and data in ``n_blocks`` chunks only.

    Stands in for a whole-brain volume whose tissue fills a few chunks (a terabyte of metadata costs
    kilobytes on disk). Each foreground chunk holds a raw phantom of ``kind`` (anisotropy dz/dx, blurred,
    scaled to uint16); the rest reads as 0 without being stored. With ``pyramid`` the coarser levels are
    the block means of level 0, written only where the blocks are, as a real pyramid would be.
    ``background`` is added to the written blocks (a camera offset: the tissue's background then differs
    from what unwritten chunks read). Returns the level-0 boxes that hold data.
    """
    from ssai3d_dask.io.omezarr import MultiscaleWriter, write_region_levels
    from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
    from ssai3d_dask.io.tissue import Occupancy

    rng = np.random.default_rng(seed)
    chunks = tuple(int(c) for c in chunks)
    grid = [-(-s // c) for s, c in zip(shape, chunks)]
    anis = float(voxel_size_um[0]) / float(voxel_size_um[2])
    writer = MultiscaleWriter(path, shape, np.uint16, voxel_size_um, chunks, region_shape=chunks if pyramid else None,
                              ngff_version=ngff_version, name="sparse", max_levels=12 if pyramid else 0)
    picks = rng.choice(int(np.prod(grid)), size=min(n_blocks, int(np.prod(grid))), replace=False)
    boxes = []
    for j, flat in enumerate(sorted(picks)):
        idx = np.unravel_index(int(flat), grid)
        box = tuple(slice(int(i) * c, min((int(i) + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        bshape = [b.stop - b.start for b in box]
        truth_shape = (int(round(bshape[0] * anis)), bshape[1], bshape[2])
        sim = simulate(kind, truth_shape, seed=seed + j + 1,
                       model=ForwardModel(0.5, 3.0, z_factor=max(anis, 1.0)))
        raw = np.zeros(bshape, np.float32)
        raw[:min(len(sim.raw), bshape[0])] = sim.raw[:bshape[0]]
        data = np.minimum(_cast(raw, "uint16").astype(np.int64) + int(background), 65535).astype(np.uint16)
        if pyramid:
            write_region_levels(path, writer.levels, box, data, f"b{j}", {})
        else:
            writer.level0[box] = data
        boxes.append(box)
    if pyramid:
        mask = np.zeros(grid, bool)
        for box in boxes:
            mask[tuple(b.start // c for b, c in zip(box, chunks))] = True
        occ = Occupancy(mask, tuple(float(c) for c in chunks))  # type: ignore[arg-type]
        writer.build_pyramid(occupied=lambda lead, box: occ.any_in_box(box))
    writer.write_metadata(window={"start": 0.0, "end": 65535.0, "min": 0.0, "max": 65535.0})
    shutil.rmtree(Path(path) / ".ssai3d", ignore_errors=True)
    return boxes
