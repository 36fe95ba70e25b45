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
