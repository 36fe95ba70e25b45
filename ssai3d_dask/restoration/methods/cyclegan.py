"""``--method cyclegan``: the 3D generator of an OT-CycleGAN (``ssai3d train-cyclegan``), run on the whole
extended crop in tiles (:func:`~ssai3d_dask.restoration.kernels.run_volume`), not on slices."""

from __future__ import annotations

import torch

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.models.precision import resolve_precision
from ssai3d_dask.restoration.kernels import run_volume
from ssai3d_dask.restoration.methods.network import NetworkRestoration


class CycleGAN(NetworkRestoration):
    name = "cyclegan"
    label = "OT-CycleGAN"
    folder_kind = "cyclegan"
    volume = True

    def check(self, settings):
        if settings.view != "mean":
            raise SettingsError(f"--view {settings.view}: the OT-CycleGAN generator restores whole sub-volumes in "
                                f"3D, not XZ/YZ slices; leave --view at mean")

    def compute(self, ext, core_offset, core_shape, spec, resources):
        if resources.model is None:  # no generator: the interpolation, as for the 2D networks
            return super().compute(ext, core_offset, core_shape, spec, resources)
        return run_volume(resources.model, ext, core_offset, core_shape, torch.device(spec.device),
                          resolve_precision(spec.precision, spec.device))
