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


#: Reflection beyond the volume's faces (output voxels). The halo inside the volume is what block invariance
#: needs (the model's reach); beyond a face there is nothing to match, only the network's own border to keep
#: away from the data: 32 px of reflection keep zero padding two down-sampling periods off the face. A thin
#: stack (256 output planes, halo 96) runs its z slices on 320 rows instead of 448.
EDGE_PAD_PX = 32


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
    def edge(self) -> tuple[int, int, int]:
        """Reflection (output voxels) beyond the volume's faces: the halo, at most :data:`EDGE_PAD_PX`."""
        return tuple(min(h, EDGE_PAD_PX) for h in self.halo)  # type: ignore[return-value]

    def ext_lengths(self) -> list[np.ndarray]:
        """Per axis, the length of each region index's extended crop: its core and halo, with the halo
        beyond the volume's faces cut to :attr:`edge`."""
        out = []
        for n, r, o, h, e in zip(self.grid, self.region_shape, self.out_shape, self.halo, self.edge):
            starts = np.arange(n) * r
            stops = np.minimum(starts + r, o)
            out.append(np.minimum(stops + h, o + e) - np.maximum(starts - h, -e))
        return out

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


#: What :func:`region_work` counts: the XZ and/or YZ slice passes of a 2D network, or the voxels of the
#: extended crop for a method computing on it as a volume (a method says which:
#: :meth:`~ssai3d_dask.restoration.methods.RestorationMethod.work_view`).
WORK_VIEWS = ("mean", "xz", "yz", "volume")


def region_work(core: list[np.ndarray], ext: list[np.ndarray], view: str) -> np.ndarray:
    """Work units per region, over the outer product of per-axis core and extended-crop lengths: for a 2D
    network the pixels of the XZ/YZ slices it runs on, ``cy ez ex + cx ez ey`` (one term for one view); for
    ``view="volume"`` the voxels of the extended crop ``ez ey ex``."""
    if view not in WORK_VIEWS:
        raise ValueError(f"work view must be one of {WORK_VIEWS}, got {view!r}")
    cz, cy, cx = (np.asarray(c, np.float64) for c in core)
    ez, ey, ex = (np.asarray(e, np.float64) for e in ext)
    ez, ey, ex = ez[:, None, None], ey[None, :, None], ex[None, None, :]
    if view == "volume":
        return ez * ey * ex
    xz = cy[None, :, None] * ez * ex
    yz = cx[None, None, :] * ez * ey
    return {"mean": xz + yz, "xz": xz + 0 * yz, "yz": yz + 0 * xz}[view]


def halo_work(shape, halo: int, view: str) -> float:
    """:func:`region_work` of one region of ``shape`` with the full halo on every side."""
    return float(region_work([np.array([s]) for s in shape], [np.array([s + 2 * halo]) for s in shape], view)[0, 0, 0])


def computed_pixel_ratio(plan: Plan, keep: np.ndarray, view: str) -> float:
    """Pixels (voxels) computed over the least a method must compute for the kept regions: 2 slice passes
    per output voxel for a 2D network with ``view="mean"`` (1 for one view), the output voxels for
    ``view="volume"``. 1.0 is no halo overhead; inside a large volume, 128 x 256 x 256 regions with a 96-px
    halo are 4.4."""
    core = plan.core_lengths()
    work = float((region_work(core, plan.ext_lengths(), view) * keep).sum())
    voxels = float((region_work(core, core, "volume") * keep).sum())
    return work / max((2 if view == "mean" else 1) * voxels, 1.0)


#: Peak memory of a running region task (bytes): per voxel of the extended crop (its input planes, raw,
#: normalised and denoised, dz/dx times fewer than the crop's voxels: the z-resampled crop is computed a
#: slab at a time, :class:`~ssai3d_dask.ops.resample.ZResampledCrop`), per core voxel (the float32 result,
#: cast in place, and the cast) and a fixed part (a few groups of slices through the network,
#: :data:`~ssai3d_dask.restoration.kernels.STREAM_PIXELS`, and the model). Measured on CPU, dz/dx 2
#: (``benchmarks/results/throughput_memory.json``): 423 MB for 64 x 512 x 512 with the small network
#: (42.5 Mvoxel crop, 16.8 Mvoxel core), 558 MB and 1366 MB for 128 x 512 x 512 and 128 x 1024 x 1024
#: with the network replaced by a copy (82.6 / 227 Mvoxel crops, 33.5 / 134 Mvoxel cores): this model
#: says 1.7-1.8x that, and :func:`auto_region` charges every region the full halo on every side, more still.
BYTES_PER_EXT_VOXEL, BYTES_PER_CORE_VOXEL, BYTES_FIXED = 4, 8, 384 * 2**20


def region_bytes(region: Sequence[int], halo: int) -> int:
    """Estimated peak memory of one task restoring ``region`` with ``halo`` (:data:`BYTES_PER_EXT_VOXEL`)."""
    ext = math.prod(r + 2 * halo for r in region)
    return int(BYTES_PER_EXT_VOXEL * ext + BYTES_PER_CORE_VOXEL * math.prod(region) + BYTES_FIXED)


def auto_region(out_shape: Sequence[int], unit: Sequence[int], halo: int, budget_bytes: int,
                view: str = "mean") -> tuple[int, int, int]:
    """The region (whole ``unit`` blocks: the chunks, or the shards) with the least computed work per output
    voxel whose task fits ``budget_bytes`` (:func:`region_bytes`): starting from one unit, the axis whose
    doubling lowers the work most is doubled, while that fits and the axis is shorter than the output.
    Work is that of a region inside the volume (full halo on every side)."""
    region = [int(u) for u in unit]

    def per_voxel(r) -> float:  # an axis the region spans has only the edge's reflection, not the halo
        ext = [np.array([n + 2 * (min(halo, EDGE_PAD_PX) if n >= o else halo)]) for n, o in zip(r, out_shape)]
        return float(region_work([np.array([n]) for n in r], ext, view)[0, 0, 0]) / math.prod(r)

    while True:
        best = None
        for axis in range(3):
            if region[axis] >= out_shape[axis]:
                continue
            grown = list(region)
            grown[axis] = min(2 * region[axis], -(-int(out_shape[axis]) // int(unit[axis])) * int(unit[axis]))
            if region_bytes(grown, halo) > budget_bytes:
                continue
            gain = per_voxel(region) - per_voxel(grown)
            if best is None or gain > best[0]:
                best = (gain, grown)
        if best is None:
            return tuple(region)  # type: ignore[return-value]
        region = best[1]

