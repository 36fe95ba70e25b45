"""``ssai3d evaluate``: score volumes against ground truth, as a table and JSON."""

from __future__ import annotations

import logging
from pathlib import Path

import dask.array as da
import numpy as np

from ssai3d_dask.evaluation import metrics
from ssai3d_dask.errors import SettingsError, VolumeError
from ssai3d_dask.ops.resample import linear_positions, resample_linear
from ssai3d_dask.io.volume import Volume, open_volume

logger = logging.getLogger(__name__)

#: Volumes up to this many voxels are scored in memory (MS-SSIM, bead fits need it).
IN_MEMORY_VOXELS = 1 << 27


def onto_truth_grid(vol: Volume, truth: Volume) -> da.Array:
    """``vol`` with z linearly interpolated onto the truth's z grid (the pipeline's interpolation)."""
    if vol.shape[1:] != truth.shape[1:]:
        raise VolumeError(f"lateral shapes differ: {vol.shape[1:]} vs truth {truth.shape[1:]}; "
                          f"evaluate needs volumes on the same lateral grid")
    if vol.shape == truth.shape:
        return vol.data
    factor = vol.voxel_size_um[0] / truth.voxel_size_um[0]
    pos = linear_positions(vol.shape[0], factor, truth.shape[0]).numpy()
    data = vol.data.rechunk({0: -1})
    return data.map_blocks(lambda b: resample_linear(np.asarray(b, np.float32), 0, pos),
                           chunks=((truth.shape[0],),) + data.chunks[1:], dtype=np.float32)


def score(pred: da.Array, truth: da.Array, voxel_size_um, data_range: float, beads: bool) -> dict:
    small = np.prod(truth.shape) <= IN_MEMORY_VOXELS
    if small:
        pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    out = {"psnr_db": metrics.psnr(pred, truth, data_range), "ssim": metrics.ssim(pred, truth, data_range),
           "mse": metrics.mse(pred, truth), "ncc": metrics.ncc(pred, truth)}
    if small and min(truth.shape) >= 7:
        out["ms_ssim"] = metrics.ms_ssim(pred, truth, data_range)
    res = metrics.fourier_resolution(pred, voxel_size_um)
    out |= {f"fourier_res_{ax}_um": v for ax, v in res.items()}
    if beads and small:
        fw = metrics.bead_fwhm(pred, voxel_size_um, positions=metrics.find_beads(truth))
        out |= {f"fwhm_{ax}_um": f"{d['mean_um']:.4f} +- {d['sd_um']:.4f} (n={d['n']})" for ax, d in fw.items()}
    return out


def evaluate_paths(pred: Path, truth: Path, raw: Path | None, data_range: float | None, beads: bool) -> dict:
    """Metrics for PRED (and RAW interpolated, and TRUTH itself for resolution) against TRUTH."""
    t = open_volume(truth)
    p = open_volume(pred)
    if p.shape != t.shape:
        raise VolumeError(f"prediction {p.shape} and truth {t.shape} differ in shape; restore onto the truth grid")
    tdata = t.data.astype(np.float64)
    import dask

    lo, hi, t_ok, p_ok = dask.compute(tdata.min(), tdata.max(), da.isfinite(tdata).all(),
                                      da.isfinite(p.data).all())
    for ok, name, path in ((t_ok, "truth", truth), (p_ok, "prediction", pred)):
        if not ok:
            raise VolumeError(f"the {name} {path} holds NaN or Inf voxels; metrics would be NaN (fix the {name})")
    if hi <= lo:
        raise VolumeError(f"the truth {truth} is constant ({lo:g}); PSNR, SSIM and resolution need structure in it")
    if data_range is None:
        data_range = float(hi - lo)
    elif not data_range > 0:
        raise SettingsError(f"--data-range must be positive, got {data_range}")
    table = {"prediction": score(p.data, tdata, t.voxel_size_um, data_range, beads)}
    if raw is not None:
        r = open_volume(raw)
        table["raw (linear z)"] = score(onto_truth_grid(r, t), tdata, t.voxel_size_um, data_range, beads)
    table["truth"] = {f"fourier_res_{ax}_um": v for ax, v in metrics.fourier_resolution(tdata, t.voxel_size_um).items()}
    table["_settings"] = {"data_range": data_range, "truth": str(truth), "prediction": str(pred),
                          "raw": str(raw) if raw else None}
    return table


def format_table(table: dict) -> str:
    cols = [k for k in table if not k.startswith("_")]
    rows = sorted({r for c in cols for r in table[c]}, key=lambda r: (r.startswith("fourier") or r.startswith("fwhm"), r))
    width = max(len(r) for r in rows) + 2
    cells = [str(v) for c in cols for v in table[c].values()]
    cw = max(14, *(len(c) + 2 for c in cols), *(len(v) + 2 for v in cells if not v[:1].isdigit()))
    lines = ["".ljust(width) + "".join(c.rjust(cw) for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = table[c].get(r, "")
            cells.append((f"{v:.4f}" if isinstance(v, float) else str(v)).rjust(cw))
        lines.append(r.ljust(width) + "".join(cells))
    return "\n".join(lines)
