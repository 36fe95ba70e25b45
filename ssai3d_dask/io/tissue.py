"""Where the tissue is, without reading the volume at full resolution.

Two cheap views of a volume, each an :class:`Occupancy` (a boolean grid over input voxels):

* **written**: the storage units (chunks, or shards) the store holds bytes for, from one listing of the
  store. A unit never written reads as the fill value, so a region whose input touches none is known
  empty without reading anything.
* **coarse**: the finest pyramid level small enough to read whole, where brighter-than-Otsu voxels mark
  the tissue for intensity statistics and patch sampling (:mod:`ssai3d_dask.adaptation.sampling`).

The store listing answers "is anything written within this box?" for a whole grid of boxes at once
through an integral image, so pruning a million regions costs milliseconds. Restoration prunes on it alone:
a region of never-written input has a known result, a dim one does not (a coarse block mean can hide a
small bright feature, and computing background gives the method's output on it, not a constant).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ssai3d_dask.io.source import Source

logger = logging.getLogger(__name__)

#: Largest coarse level read to find the tissue (voxels; 64 MiB of uint16).
COARSE_MAX_VOXELS = 1 << 25
#: Coarse levels more than this many times coarser (per axis) than the input are not trusted for pruning.
COARSE_MAX_FACTOR = 16


@dataclass(frozen=True)
class Occupancy:
    """A boolean grid over a volume: cell ``k`` along an axis covers input voxels
    ``[floor(k * cell), ceil((k + 1) * cell))``."""

    mask: np.ndarray
    cell: tuple[float, float, float]

    def __post_init__(self) -> None:
        integral = np.zeros(tuple(n + 1 for n in self.mask.shape), np.int64)
        integral[1:, 1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
        object.__setattr__(self, "_integral", integral)

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, bounds: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """For per-axis box bounds (``lo``, ``hi``: arrays of input coordinates), whether each box of the
        outer product holds a True cell. Returns a boolean array of shape ``(len(lo_z), len(lo_y), len(lo_x))``."""
        idx = []
        for (lo, hi), c, n in zip(bounds, self.cell, self.mask.shape):
            a = np.clip(np.floor(np.asarray(lo) / c).astype(np.int64), 0, n)
            b = np.clip(np.ceil(np.asarray(hi) / c).astype(np.int64), 0, n)
            idx.append((a, np.maximum(b, a)))
        (z0, z1), (y0, y1), (x0, x1) = idx
        s = self._integral  # type: ignore[attr-defined]
        z0, z1 = z0[:, None, None], z1[:, None, None]
        y0, y1 = y0[None, :, None], y1[None, :, None]
        x0, x1 = x0[None, None, :], x1[None, None, :]
        total = (s[z1, y1, x1] - s[z0, y1, x1] - s[z1, y0, x1] - s[z1, y1, x0]
                 + s[z0, y0, x1] + s[z0, y1, x0] + s[z1, y0, x0] - s[z0, y0, x0])
        return total > 0

    def any_in_box(self, box: Sequence[slice]) -> bool:
        return bool(self.any_in([(np.array([s.start]), np.array([s.stop])) for s in box])[0, 0, 0])


@dataclass(frozen=True)
class TissueViews:
    """What a volume's store says about where the data is: written units and a coarse level (each may be None)."""

    written: Occupancy | None
    coarse: object | None  # a source.Coarse


def tissue_views(vol) -> TissueViews:
    """The store listing and coarse level of ``vol``'s source, made once per Volume object and kept on it
    (statistics, patch sampling and pruning all ask; a terabyte store is listed once)."""
    views = getattr(vol, "_tissue_views", None)
    if views is None:
        src = vol.reader
        views = TissueViews(written_occupancy(src), coarse_view(src)) if src is not None else TissueViews(None, None)
        vol._tissue_views = views
    return views


def written_occupancy(source: Source) -> Occupancy | None:
    """Storage units holding bytes, or None when the source cannot tell (TIFF, in-memory, unlistable)."""
    mask = source.written_units()
    if mask is None:
        return None
    return Occupancy(mask, tuple(float(u) for u in source.storage_unit()))  # type: ignore[arg-type]


def coarse_view(source: Source):
    """The coarse level used to find the tissue, or None (no pyramid, or only levels too coarse)."""
    coarse = source.coarse(COARSE_MAX_VOXELS)
    if coarse is None or max(coarse.factor) > COARSE_MAX_FACTOR or max(coarse.factor) <= 1:
        return None
    return coarse


def coarse_foreground_weights(coarse) -> np.ndarray:
    """Where to favour sampling before any normalisation is known: coarse voxels above their own Otsu threshold."""
    from skimage.filters import threshold_otsu

    data = np.asarray(coarse.data, np.float32)
    try:
        return data > threshold_otsu(data)
    except ValueError:  # constant coarse level
        return np.zeros(data.shape, bool)
