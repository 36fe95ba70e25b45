"""``--method interp``: linear z interpolation only, the reference every method must beat.

It needs neither normalisation nor a halo beyond the input planes the crop adds, and casts straight to
the output type a band of rows at a time (:func:`~ssai3d_dask.restoration.kernels.interpolate_core`).
"""

from __future__ import annotations

from ssai3d_dask.restoration.kernels import interpolate_core
from ssai3d_dask.restoration.methods.base import RestorationMethod
from ssai3d_dask.settings import InterpMethod


class Interp(RestorationMethod):
    name = "interp"
    label = "linear interpolation"
    settings_model = InterpMethod
    volume = True
    normalised = False

    def compute(self, ext, core_offset, core_shape, spec, resources):
        return interpolate_core(ext, core_offset, core_shape, spec.out_dtype)

    def default_workers(self, cores: int) -> int:
        """One per core: bound by numpy and the codecs, one core per task beats one multi-threaded worker."""
        return cores
