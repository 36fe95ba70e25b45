"""Tiled inference of one image, for tests and benchmarks of NAFNet's local pooling (the package's own
copy lives in :mod:`ssai3d_dask.models.reach`, which measures the halo restoration needs)."""

from ssai3d_dask.models.reach import tiled_forward

__all__ = ["tiled_forward"]
