"""Regions that need not run: those with nothing written within their reach, and the one value they read
(what computing them gives), shared by every (t, c) slice of an output."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ssai3d_dask.io.tissue import TissueViews
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.restoration.methods import Resources
from ssai3d_dask.restoration.plan import Plan
from ssai3d_dask.restoration.spec import TaskSpec
from ssai3d_dask.settings import RestoreSettings

if TYPE_CHECKING:
    from ssai3d_dask.restoration.pipeline import RestoreJob

logger = logging.getLogger(__name__)


def prune_regions(plan: Plan, views: TissueViews, settings: RestoreSettings) -> tuple[np.ndarray, dict]:
    """Regions whose input reach touches written data (all of them with skip_empty off, or when the store
    cannot say what it holds)."""
    keep = np.ones(plan.grid, bool)
    pruned = {"unwritten": 0}
    if settings.skip_empty and views.written is not None:
        keep &= views.written.any_in(plan.input_bounds())
        pruned["unwritten"] = int(keep.size - keep.sum())
    return keep, pruned


def level_tolerance(dtype: np.dtype, norm: Normalization) -> float:
    """How far two output levels may lie apart and still be one: none for integers (cast values are
    equal or not), 1e-4 of the normalised range for floats (the arithmetic of different crop shapes)."""
    return 0.0 if np.issubdtype(dtype, np.integer) else 1e-4 * abs(norm.high - norm.low)


def unwritten_level(plan: Plan, spec: TaskSpec, fill_in: float, resources: Resources | None = None) -> float | None:
    """What computing a region whose whole input is ``fill_in`` (never-written chunks) gives, so that such
    regions can be pruned and read it as the output's fill value with the same result as computing them.

    The region is computed by :func:`~ssai3d_dask.restoration.task.compute_region` itself, once for every
    distinct region shape of the plan (at most 8: full regions and those cut short at the far edges;
    a constant crop costs one slice per pass, see :func:`~ssai3d_dask.restoration.kernels.restore_block`).
    Returns None when the outputs are not one value (within :func:`level_tolerance`): then pruning would
    change the result.
    """
    from ssai3d_dask.restoration.task import compute_region

    if not np.isfinite(fill_in):
        return None
    dtype = spec.out_dtype
    lengths = plan.core_lengths()
    picks = [sorted({0, len(n) - 1}) for n in lengths]  # region 0 and the last along each axis: every shape
    values = []
    for kz in picks[0]:
        for ky in picks[1]:
            for kx in picks[2]:
                region = plan.region(int(np.ravel_multi_index((kz, ky, kx), plan.grid)))
                crop = np.full(tuple(s.stop - s.start for s in plan.input_crop(region)), fill_in, np.float32)
                out, _ = compute_region(plan, region, crop, spec, resources)
                values.append(np.asarray(out, np.float64).ravel())
    values = np.concatenate(values)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > level_tolerance(dtype, spec.norm):
        logger.info("output on the input's fill value %g spans %g..%g: unwritten regions are computed", fill_in, lo, hi)
        return None
    return float(np.median(values))


def share_fill(jobs: list[RestoreJob]) -> float:
    """One zarr fill value for all slices: the lowest of their levels for unwritten input. A slice with
    pruned regions whose own level differs from it is computed everywhere (pruned regions would read wrong)."""
    pruning = [j.fill_value for j in jobs if j.keep.size != j.keep.sum()]
    fill = min(pruning) if pruning else jobs[0].fill_value
    for j in jobs:
        if abs(j.fill_value - fill) > level_tolerance(j.dtype, j.norm) and j.keep.size != j.keep.sum():
            j.notes.append(f"slice {j.prefix.rstrip('-')}: its output on unwritten input {j.fill_value:g} differs "
                           f"from the output fill value {fill:g}; all its regions are computed")
            j.keep = np.ones_like(j.keep)
            j.pruned = {"unwritten": 0}
    return fill
