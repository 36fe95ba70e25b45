"""The isotropic output grid of a stack: one function, used by adapt, restore, CARE, the dry run and ``info``.

The output puts z on the lateral pixel: with ``f = dz / dx`` (at least 1), output plane ``i`` sits at
input plane ``i / f`` and the output has ``round(Z * f)`` planes. When z is already as fine as x or finer
(``dz <= dx``), nothing is interpolated (``f = 1``) and the output keeps the input's z spacing; the output
voxel size is always ``(dz / f, dy, dx)``, so physical extent is preserved in both cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ssai3d_dask.errors import VolumeError


@dataclass(frozen=True)
class Geometry:
    """Input and isotropic output grids (z, y, x); sizes in voxels, voxel sizes in micrometres."""

    in_shape: tuple[int, int, int]
    in_voxel_um: tuple[float, float, float]
    z_factor: float
    out_shape: tuple[int, int, int]
    out_voxel_um: tuple[float, float, float]

    @property
    def z_finer_than_x(self) -> bool:
        """True when the stack has no axial undersampling to undo (dz < dx)."""
        return self.in_voxel_um[0] < self.in_voxel_um[2]


def output_shape(in_shape: Sequence[int], z_factor: float) -> tuple[int, int, int]:
    """(round(Z * f), Y, X): the output grid of a stack whose z is sampled ``z_factor`` times coarser."""
    return (int(round(int(in_shape[0]) * z_factor)), int(in_shape[1]), int(in_shape[2]))


#: The largest dz/dx restored: beyond it the voxel size is almost surely wrong (an order of z, y, x or of
#: units), and the output would hold that many times more planes than the input.
MAX_Z_FACTOR = 32.0


def check_anisotropy(voxel_size_um: Sequence[float], source: str = "the input") -> None:
    dz, dx = float(voxel_size_um[0]), float(voxel_size_um[2])
    if dz / dx > MAX_Z_FACTOR:
        raise VolumeError(f"{source}: anisotropy dz/dx = {dz / dx:g} (voxel {tuple(voxel_size_um)} um) is beyond "
                          f"{MAX_Z_FACTOR:g}; check --voxel-size (z, y, x order, micrometres)")


def isotropic_geometry(in_shape: Sequence[int], voxel_size_um: Sequence[float], strict: bool = True) -> Geometry:
    """The output grid for a (z, y, x) stack of ``in_shape`` voxels with ``voxel_size_um`` (dz, dy, dx).

    Examples
    --------
    >>> g = isotropic_geometry((16, 128, 128), (0.4, 0.1, 0.1))
    >>> g.z_factor, g.out_shape, g.out_voxel_um
    (4.0, (64, 128, 128), (0.1, 0.1, 0.1))
    >>> isotropic_geometry((16, 8, 8), (0.05, 0.1, 0.1)).out_voxel_um   # dz < dx: z kept as is
    (0.05, 0.1, 0.1)

    ``strict`` refuses an anisotropy beyond :data:`MAX_Z_FACTOR` (``ssai3d info`` shows it instead).
    """
    if strict:
        check_anisotropy(voxel_size_um)
    shape = tuple(int(s) for s in in_shape)
    dz, dy, dx = (float(v) for v in voxel_size_um)
    z_factor = max(1.0, dz / dx)
    out_shape = output_shape(shape, z_factor)
    out_dz = float(f"{dz / z_factor:.12g}")
    return Geometry(shape, (dz, dy, dx), z_factor, out_shape, (out_dz, dy, dx))  # type: ignore[arg-type]
