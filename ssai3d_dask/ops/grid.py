"""Regular block grids: the slices that tile an array."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def grid_slices(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """Boxes of at most ``block`` that tile ``shape`` in C order (the last ones clipped)."""
    counts = [-(-s // b) for s, b in zip(shape, block)]
    for idx in np.ndindex(*counts):
        yield tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(idx, block, shape))


def chunk_bounds(chunks: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per-axis chunk edges (0, c0, c0 + c1, ...) of a dask ``chunks`` tuple."""
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]


def chunk_slices(chunks: Sequence[Sequence[int]]) -> list[tuple[slice, ...]]:
    """The box of every chunk of a dask ``chunks`` tuple (irregular chunks allowed), in C order."""
    bounds = chunk_bounds(chunks)
    return [tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx))
            for idx in np.ndindex(*[len(c) for c in chunks])]
