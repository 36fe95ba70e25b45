"""``--method rl``: Richardson-Lucy deconvolution with a known PSF (a Gaussian given by its sd, or a measured
one), on the same z-resampled crop the networks see (:mod:`ssai3d_dask.restoration.rl`)."""

from __future__ import annotations

import os
import threading

import numpy as np

from ssai3d_dask.restoration.methods.base import Resources, RestorationMethod
from ssai3d_dask.restoration.rl import default_rl_halo, gaussian_psf_on_grid, load_psf, richardson_lucy
from ssai3d_dask.settings import RLMethod

_PSF: dict = {}
_PSF_LOCK = threading.Lock()


def cached_psf(path: str) -> np.ndarray:
    """The PSF saved beside the output, loaded once per worker process (keyed by path and mtime)."""
    key = (path, os.stat(path).st_mtime_ns)
    with _PSF_LOCK:
        if key not in _PSF:
            _PSF.clear()
            _PSF[key] = np.load(path, allow_pickle=False)
        return _PSF[key]


class RichardsonLucy(RestorationMethod):
    name = "rl"
    label = "Richardson-Lucy"
    settings_model = RLMethod
    volume = True

    def resources(self, settings, geometry, adapted):
        m = settings.method
        psf = (load_psf(m.psf_file) if m.psf_file
               else gaussian_psf_on_grid(m.psf_sigma_um, geometry.out_voxel_um[2], geometry.z_factor)[0])
        return Resources(psf=psf)

    def halo(self, resources):
        return default_rl_halo(resources.psf)

    def load(self, spec):
        return Resources(psf=cached_psf(spec.psf_path))

    def compute(self, ext, core_offset, core_shape, spec, resources):
        core = tuple(slice(o, o + c) for o, c in zip(core_offset, core_shape))
        return richardson_lucy(np.asarray(ext), resources.psf, spec.method_settings.iterations, spec.device)[core]
