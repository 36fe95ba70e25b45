"""Global intensity statistics of a volume from a bounded number of sampled chunks, drawn where the tissue
is (written chunks; those a coarse pyramid level shows tissue in, four times as often). Adaptation
normalises its patches with them, and restoration with ``--method rl/interp`` (no model folder) its crops.
"""

from __future__ import annotations

import math

import dask
import numpy as np

from ssai3d_dask.errors import SettingsError, VolumeError
from ssai3d_dask.io.source import read_checked
from ssai3d_dask.io.tissue import Occupancy, coarse_foreground_weights, tissue_views
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.ops.grid import chunk_bounds, chunk_slices
from ssai3d_dask.ops.normalize import Normalization


def chunk_weights(vol: Volume) -> np.ndarray | None:
    """Sampling weight of each dask chunk of ``vol`` (shape ``vol.data.numblocks``), or None for uniform.

    0 where the store holds no bytes under the chunk, 4 where the coarse level shows tissue, 1 elsewhere.
    Raises VolumeError when the store holds no bytes at all.
    """
    views = tissue_views(vol)
    written, coarse = views.written, views.coarse
    if written is None and coarse is None:
        return None
    bounds = [(b[:-1], b[1:]) for b in chunk_bounds(vol.data.chunks)]
    weights = np.ones(vol.data.numblocks, np.float64)
    if written is not None:
        weights *= written.any_in(bounds)
        if not weights.any():
            raise VolumeError(f"{vol.source} holds no data (no chunk of the selected array was ever written)")
    if coarse is not None:
        weights *= 1 + 3 * Occupancy(coarse_foreground_weights(coarse), coarse.factor).any_in(bounds)
    return None if weights.min() == weights.max() else weights


def sample_chunks(vol: Volume, n_chunks: int, seed: int, max_voxels_per_chunk: int = 1 << 18) -> list[np.ndarray]:
    """Values of ``n_chunks`` random chunks (each subsampled to at most ``max_voxels_per_chunk``),
    drawn by :func:`chunk_weights`."""
    rng = np.random.default_rng(seed)
    weights = chunk_weights(vol)
    if weights is None:
        slices = chunk_slices(vol.data.chunks)
        chosen = [slices[i] for i in sorted(rng.choice(len(slices), size=min(n_chunks, len(slices)), replace=False))]
    else:
        flat = weights.ravel()
        k = min(n_chunks, int(np.count_nonzero(flat)))
        picks = sorted(rng.choice(flat.size, size=k, replace=False, p=flat / flat.sum()))
        bounds = chunk_bounds(vol.data.chunks)
        chosen = [tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, np.unravel_index(j, weights.shape)))
                  for j in picks]
    parts = []
    for sl in chosen:
        block = vol.data[sl]
        step = max(1, int(math.ceil((math.prod(block.shape) / max_voxels_per_chunk) ** (1 / 3))))
        parts.append(block[::step, ::step, ::step].ravel())
    try:
        return list(dask.compute(*parts))
    except MemoryError:
        raise
    except Exception:  # a damaged chunk: name it (read_checked raises), else the error as it was
        source = vol.source_handle()
        for sl in chosen:
            read_checked(source, sl, "sampling intensity statistics")
        raise


def volume_statistics(vol: Volume, seed: int = 0, n_chunks: int = 64,
                      percentiles: tuple[float, float] = (0.1, 99.9)) -> Normalization:
    """Robust percentiles of the volume from sampled chunks, plus a foreground threshold (Otsu)."""
    from skimage.filters import threshold_otsu

    values = np.concatenate([v.astype(np.float64) for v in sample_chunks(vol, n_chunks, seed)])
    bad = int(values.size - np.isfinite(values).sum())
    if bad:
        raise VolumeError(f"{vol.source} holds NaN or Inf ({bad} of {values.size} sampled voxels); replace them "
                          f"(e.g. with 0) before restoring, or the output would carry them")
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        raise SettingsError(f"{vol.source} looks constant (percentiles {percentiles} both {low}); nothing to restore")
    norm = (np.clip(values, low, high) - low) / (high - low)
    try:
        thr = float(threshold_otsu(norm))
    except ValueError:
        thr = 0.0
    return Normalization(low, high, tuple(percentiles), thr, int(values.size))
