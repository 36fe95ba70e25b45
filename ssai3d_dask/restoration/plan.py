"""The block plan: regions of whole output chunks tiling the isotropic output grid.

A :class:`Plan` is a few numbers (shapes, halo, the region grid), not a list: regions are made on demand
(:meth:`Plan.region`), so a plan of a million regions costs what a plan of ten does, and a task can carry
the plan and its own :class:`Region` in about a kilobyte. Input reach is separable per axis
(:meth:`Plan.input_bounds`), which lets foreground pruning and byte counts run vectorised over the grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ssai3d_dask.geometry import output_shape
from ssai3d_dask.errors import SettingsError


@dataclass(frozen=True)
class Region:
    """One output region: ``core`` in output voxels (z, y, x) and the halo around it."""

    index: int
    core: tuple[slice, slice, slice]
    halo: tuple[int, int, int]

    @property
    def block_id(self) -> str:
        return f"r{self.index:07d}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.core)  # type: ignore[return-value]


@dataclass(frozen=True)
class Plan:
    """Output geometry and region grid. ``region_shape`` and ``halo`` are in output voxels (z, y, x)."""

    in_shape: tuple[int, int, int]
    z_factor: float
    out_shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    region_shape: tuple[int, int, int]
    halo: tuple[int, int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        """Regions per axis."""
        return tuple(-(-o // r) for o, r in zip(self.out_shape, self.region_shape))  # type: ignore[return-value]

    @property
    def n_regions(self) -> int:
        return math.prod(self.grid)

    def region(self, index: int) -> Region:
        """Region number ``index`` (C order over :attr:`grid`)."""
        idx = np.unravel_index(int(index), self.grid)
        core = tuple(slice(int(k) * r, min((int(k) + 1) * r, o)) for k, r, o in zip(idx, self.region_shape, self.out_shape))
        return Region(int(index), core, self.halo)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Region]:
        return (self.region(i) for i in range(self.n_regions))

    def __len__(self) -> int:
        return self.n_regions

    def input_z_range(self, region: Region) -> tuple[int, int]:
        """Input planes [z0, z1) covering the region's output planes with halo (clipped to the volume)."""
        return self._z_range(region.core[0].start, region.core[0].stop)

    def _z_range(self, zo_start: int, zo_stop: int) -> tuple[int, int]:
        zo0 = max(zo_start - self.halo[0], 0)
        zo1 = min(zo_stop + self.halo[0], self.out_shape[0])
        z0 = int(math.floor(zo0 / self.z_factor))
        z1 = int(math.floor((zo1 - 1) / self.z_factor)) + 2
        return max(z0, 0), min(z1, self.in_shape[0])

    def input_crop(self, region: Region) -> tuple[slice, slice, slice]:
        """The input voxels (z, y, x) a region reads: its core and halo, clipped to the volume."""
        z0, z1 = self.input_z_range(region)
        y, x = region.core[1], region.core[2]
        hy, hx = self.halo[1], self.halo[2]
        return (slice(z0, z1), slice(max(y.start - hy, 0), min(y.stop + hy, self.in_shape[1])),
                slice(max(x.start - hx, 0), min(x.stop + hx, self.in_shape[2])))

    def input_bounds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per axis, the input [lo, hi) each region index along that axis reads (the crop is separable)."""
        out = []
        for axis in range(3):
            n, r = self.grid[axis], self.region_shape[axis]
            starts = np.arange(n) * r
            stops = np.minimum(starts + r, self.out_shape[axis])
            if axis == 0:
                lo, hi = zip(*(self._z_range(int(a), int(b)) for a, b in zip(starts, stops)))
                out.append((np.asarray(lo), np.asarray(hi)))
            else:
                h, size = self.halo[axis], self.in_shape[axis]
                out.append((np.maximum(starts - h, 0), np.minimum(stops + h, size)))
        return out

    def core_lengths(self) -> list[np.ndarray]:
        """Per axis, the output length of each region index along that axis."""
        return [np.minimum((np.arange(n) + 1) * r, o) - np.arange(n) * r
                for n, r, o in zip(self.grid, self.region_shape, self.out_shape)]


def make_plan(in_shape: Sequence[int], z_factor: float, chunks: Sequence[int], region_shape: Sequence[int],
              halo: Sequence[int], multiple: int = 16) -> Plan:
    """Regions of whole output chunks tiling the isotropic output grid.

    Raises ValueError when chunks, regions or halos break the alignment that
    block invariance needs (multiples of ``multiple``; regions of whole chunks).
    """
    in_shape = tuple(int(s) for s in in_shape)
    out_shape = output_shape(in_shape, z_factor)
    chunks = tuple(int(c) for c in chunks)
    region_shape = tuple(min(int(r), -(-o // c) * c) for r, o, c in zip(region_shape, out_shape, chunks))
    for name, vals in (("chunks", chunks), ("region", region_shape), ("halo", halo)):
        if any(v % multiple for v in vals):
            raise SettingsError(f"{name} {tuple(vals)} must be multiples of {multiple} (the network's down-sampling)")
    if any(r % c for r, c in zip(region_shape, chunks)):
        raise SettingsError(f"region {region_shape} must be a whole number of chunks {chunks}")
    return Plan(in_shape, float(z_factor), out_shape, chunks, region_shape,  # type: ignore[arg-type]
                tuple(int(h) for h in halo))  # type: ignore[arg-type]
