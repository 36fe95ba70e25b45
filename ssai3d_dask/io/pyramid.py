"""Pyramid layout: per-level shapes, chunks, shards, and which levels a region task writes itself.

Level ``L`` is a block mean of level ``L - 1`` (:func:`downsample_mean`). With a block plan, a region's
footprint at level ``L`` is its core divided by the cumulative factor ``F_L``; while that footprint is a
whole number of voxels and still sizeable (at least :data:`MIN_TASK_LEVEL_VOXELS`), the task that
restored the region computes the level from the data it holds and writes it, into chunks and shards
that lie inside the footprint, so no two tasks ever write the same file and no second pass over level 0
is needed. Only the levels below that (1/512 of level 0 or less with default sizes) are computed at the
end, from the last task-written level, skipping blocks that hold only the fill value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ssai3d_dask.io.casting import cast_output

#: A level is written by region tasks while a region's footprint there has at least this many voxels
#: (32 KiB of uint16) and at least 8 voxels along every axis: smaller pieces make too many tiny files.
MIN_TASK_LEVEL_VOXELS = 1 << 15
MIN_TASK_LEVEL_AXIS = 8
#: The NGFF ``type`` of our downsampling, as ome-zarr-py names the same block mean.
DOWNSAMPLING_TYPE = "local_mean"


@dataclass(frozen=True)
class Level:
    """One pyramid level: array ``shape``, ``chunks``, ``shards`` (None: unsharded), cumulative ``factor``
    relative to level 0, per-step ``step`` factor from the level above, and whether region tasks write it."""

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None
    factor: tuple[int, int, int]
    step: tuple[int, int, int]
    in_task: bool

    def box(self, core: Sequence[slice]) -> tuple[slice, ...]:
        """The block of this level made from a level-0 region ``core`` (whose start is a multiple of ``factor``)."""
        return tuple(slice(s.start // f, min(s.stop // f, n)) for s, f, n in zip(core, self.factor, self.shape))


def pyramid_factors(shape: Sequence[int], voxel_size_um: Sequence[float], chunks: Sequence[int],
                    max_levels: int = 12) -> list[tuple[int, ...]]:
    """Per-level, per-axis downsampling factors relative to the level above.

    An axis is halved when its voxel is within 1.5x of the finest axis (so
    anisotropic data becomes more isotropic first) and it still spans more
    than one chunk. Levels stop when no axis spans more than one chunk.
    """
    shape, vox = list(shape), list(voxel_size_um)
    levels: list[tuple[int, ...]] = []
    while len(levels) < max_levels:
        finest = min(vox)
        f = tuple(2 if (shape[i] > chunks[i] and vox[i] <= 1.5 * finest) else 1 for i in range(len(shape)))
        if all(v == 1 for v in f):
            break
        levels.append(f)
        shape = [max(1, s // k) for s, k in zip(shape, f)]
        vox = [v * k for v, k in zip(vox, f)]
    return levels


def _clip_shard(shards: Sequence[int], chunks: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """A shard no larger than the array needs, still a whole number of chunks."""
    return tuple(min(s, -(-n // c) * c) for s, c, n in zip(shards, chunks, shape))  # type: ignore[return-value]


def pyramid_layout(shape: Sequence[int], voxel_size_um: Sequence[float], chunks: Sequence[int],
                   region_shape: Sequence[int] | None = None, shards: Sequence[int] | None = None,
                   max_levels: int = 12) -> list[Level]:
    """Levels of a multiscale image written region by region (``region_shape``) or in one go (None).

    ``shards`` is the level-0 shard shape (None: unsharded); it must divide ``region_shape`` and be a
    whole number of ``chunks``. Task-written levels below 0 get one shard per region footprint.
    """
    shape = tuple(int(s) for s in shape)
    chunks0 = tuple(min(int(c), s) for c, s in zip(chunks, shape))
    levels = [Level(shape, chunks0, _clip_shard(shards, chunks0, shape) if shards else None,  # type: ignore[arg-type]
                    (1, 1, 1), (1, 1, 1), region_shape is not None)]
    factor = (1, 1, 1)
    shape_l = shape
    for step in pyramid_factors(shape, voxel_size_um, chunks, max_levels):
        factor = tuple(f * s for f, s in zip(factor, step))
        shape_l = tuple(max(1, n // s) for n, s in zip(shape_l, step))
        in_task = False
        if region_shape is not None and levels[-1].in_task and all(r % f == 0 for r, f in zip(region_shape, factor)):
            foot = tuple(r // f for r, f in zip(region_shape, factor))
            in_task = math.prod(foot) >= MIN_TASK_LEVEL_VOXELS and min(foot) >= MIN_TASK_LEVEL_AXIS
        if in_task:
            c = tuple(min(ci if fo % ci == 0 else fo, n) for ci, fo, n in zip(chunks, foot, shape_l))
            sh = _clip_shard(foot, c, shape_l) if shards else None
        else:
            c, sh = tuple(min(int(ci), n) for ci, n in zip(chunks, shape_l)), None
        levels.append(Level(shape_l, c, sh, factor, step, in_task))  # type: ignore[arg-type]
    return levels


#: Bytes of float32 one band of :func:`downsample_mean` works on: a few MiB stays in cache, where the whole
#: block converted at once does not (8x faster on a 256 x 2048 x 512 uint16 block, identical result).
DOWNSAMPLE_BAND_BYTES = 2**22


def downsample_mean(block: np.ndarray, step: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """Block mean by ``step`` per axis (excess trimmed), in float32, integers rounded, cast to ``dtype``.

    The one downsampling of the package: region tasks and the final pass both call it, so every level
    is the same function of level 0 wherever it was computed. Sums are taken axis by axis over strided
    views (a reshape-and-mean over non-adjacent axes is several times slower); for integer data up to
    16 bits they are exact in float32, so the result does not depend on the order of summation. The
    block is taken a band of planes at a time (:data:`DOWNSAMPLE_BAND_BYTES`); each output voxel is the
    same arithmetic on the same inputs whatever the band.
    """
    step = tuple(int(s) for s in step)
    shape = tuple((n // s) * s for n, s in zip(block.shape, step))
    out = np.empty(tuple(n // s for n, s in zip(shape, step)), np.dtype(dtype))
    band = max(1, DOWNSAMPLE_BAND_BYTES // max(1, 4 * math.prod(shape[1:]))) * step[0]
    for z0 in range(0, shape[0], band):
        z1 = min(z0 + band, shape[0])
        out[z0 // step[0]:z1 // step[0]] = _downsample_band(block[z0:z1, :shape[1], :shape[2]], step, dtype)
    return out


def _downsample_band(block: np.ndarray, step: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    acc = block.astype(np.float32)
    for axis, s in enumerate(step):
        if s == 1:
            continue
        index = [slice(None)] * acc.ndim
        index[axis] = slice(0, None, s)
        total = acc[tuple(index)].copy()
        for k in range(1, s):
            index[axis] = slice(k, None, s)
            total += acc[tuple(index)]
        acc = total
    acc *= np.float32(1.0 / math.prod(step))
    return cast_output(acc, dtype)
