"""Linear resampling along one axis, the same convention for a block as for the whole volume.

Used for the z interpolation of restoration, the axial forward model of training pairs and the z
subsampling of phantoms.
"""

from __future__ import annotations

import numpy as np
import torch


def linear_positions(n_in: int, factor: float, n_out: int | None = None, start: int = 0) -> torch.Tensor:
    """Input coordinates of output samples ``start..start+n_out`` on a grid ``factor`` x finer."""
    n_out = int(round(n_in * factor)) if n_out is None else n_out
    return (torch.arange(start, start + n_out, dtype=torch.float64)) / float(factor)


def resample_linear(x, dim: int, positions, offset: float = 0.0):
    """Sample ``x`` along ``dim`` at fractional ``positions`` by linear interpolation.

    ``positions`` are global input coordinates; ``offset`` is the global
    coordinate of ``x``'s first sample along ``dim`` (for blocks cut from a
    larger volume). Positions outside the covered range are clamped to the
    nearest edge sample, the same convention for a block as for the whole.
    Accepts torch tensors or numpy arrays (returned as the same type).
    """
    if isinstance(x, np.ndarray):
        return resample_linear(torch.from_numpy(np.ascontiguousarray(x)), dim, torch.as_tensor(positions),
                               offset).numpy()
    n = x.shape[dim]
    p = (positions.to(device=x.device, dtype=torch.float64) - offset).clamp(0, n - 1)
    i0 = p.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    wt = (p - i0.to(torch.float64)).to(x.dtype)
    shape = [1] * x.ndim
    shape[dim] = -1
    # One fused pass (lerp, in place on the fresh gather) instead of three temporaries: 2.7x faster on a
    # 40 x 288 x 576 block, identical to a + (b - a) * w within 6e-8.
    return x.index_select(dim, i0).lerp_(x.index_select(dim, i1), wt.view(shape))


def resample_z_block(block: np.ndarray, z0_in: int, out_z: slice, z_factor: float) -> np.ndarray:
    """Output planes ``out_z`` (global indices) from input planes starting at global index ``z0_in``."""
    pos = torch.arange(out_z.start, out_z.stop, dtype=torch.float64) / z_factor
    return resample_linear(np.asarray(block, np.float32), 0, pos, offset=z0_in)


def subsample_z(vol: np.ndarray, z_factor: float) -> np.ndarray:
    """Planes every ``z_factor`` voxels from plane 0 (linear interpolation for fractional steps)."""
    if z_factor == 1:
        return vol
    pos = torch.from_numpy(np.arange(0, vol.shape[0] - 1 + 1e-9, z_factor))
    return resample_linear(np.asarray(vol, np.float32), 0, pos)


def symmetric_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices into an axis of length ``n`` for positions ``idx`` of its symmetric (edge-repeating) mirror
    padding, of any width: what :func:`ssai3d_dask.ops.padding.symmetric_pad` puts there."""
    m = np.mod(idx, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def _as_slice(idx: np.ndarray) -> "slice | np.ndarray":
    """A run of consecutive indices as a slice (a view, no copy), anything else as it is."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class ZResampledCrop:
    """A crop's z-resampled, reflect-padded volume, computed a slab at a time instead of held whole.

    Equals ``symmetric_pad(resample_z_block(planes, z0_in, slice(*z_range), z_factor), pad)``, but holds only
    ``planes`` (dz/dx times fewer planes than the result): ``crop[:, a:b, :]`` (any slices of step 1)
    gathers the lateral rows it needs, mirrored where they fall in the padding, then interpolates just
    those along z, each output plane from its (mirrored) global index as the whole array would. A region
    task's memory is then its input planes and its result, not 4 bytes per voxel of the resampled crop.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, planes: np.ndarray, z0_in: int, z_range: tuple[int, int], z_factor: float,
                 pad: "list[tuple[int, int]] | tuple" = ((0, 0), (0, 0), (0, 0))):
        self.planes = np.asarray(planes)  # any real dtype: converted to float32 a slab at a time
        self.z0_in, self.z_factor = int(z0_in), float(z_factor)
        self.z_range = (int(z_range[0]), int(z_range[1]))
        self.pad = [(int(a), int(b)) for a, b in pad]
        self.inner = (self.z_range[1] - self.z_range[0], self.planes.shape[1], self.planes.shape[2])
        self.shape = tuple(n + a + b for n, (a, b) in zip(self.inner, self.pad))
        self.size = int(np.prod(self.shape))

    def _index(self, axis: int, key) -> np.ndarray:
        start, stop, step = key.indices(self.shape[axis]) if isinstance(key, slice) else (key, key + 1, 1)
        if step != 1:
            raise ValueError("ZResampledCrop takes slices of step 1")
        return symmetric_index(np.arange(start, stop) - self.pad[axis][0], self.inner[axis])

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        iz, iy, ix = (self._index(axis, k) for axis, k in enumerate(key))
        sub = self.planes[:, _as_slice(iy)][:, :, _as_slice(ix)]  # views where the rows are not mirrored
        pos = torch.from_numpy((self.z_range[0] + iz).astype(np.float64)) / self.z_factor
        out = resample_linear(np.asarray(sub, np.float32), 0, pos, offset=self.z0_in)
        return out[tuple(0 if isinstance(k, (int, np.integer)) else slice(None) for k in key)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    def _extrema(self) -> tuple[float, float]:
        """min and max of the whole (mirroring repeats values, so those of the unpadded resampled crop),
        a band of rows at a time."""
        if not hasattr(self, "_minmax"):
            lo, hi = np.inf, -np.inf
            rows = max(1, 2**24 // max(1, self.inner[0] * self.inner[2]))
            pos = torch.arange(*self.z_range, dtype=torch.float64) / self.z_factor
            for y in range(0, self.inner[1], rows):
                band = resample_linear(np.asarray(self.planes[:, y:y + rows], np.float32), 0, pos, offset=self.z0_in)
                lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
            self._minmax = (lo, hi)
        return self._minmax

    def min(self) -> float:
        return self._extrema()[0]

    def max(self) -> float:
        return self._extrema()[1]
