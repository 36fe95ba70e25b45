"""The task spec: what every region task of one (t, c) slice receives besides its region, plan and source.

A frozen, typed record made once by :func:`~ssai3d_dask.restoration.pipeline.prepare_restore`; the variants a
caller needs (the slice's prefix, a PSF path, the thread count of a local run) are made with
:meth:`TaskSpec.replace`. It pickles in well under a kilobyte plus its pyramid layout, whatever the volume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssai3d_dask.io.pyramid import Level
from ssai3d_dask.ops.normalize import Normalization


@dataclass(frozen=True)
class TaskSpec:
    """How one region is restored and written.

    ``method`` names a registered method (:mod:`ssai3d_dask.restoration.methods`) and ``method_settings`` is its
    validated settings model (e.g. the Richardson-Lucy iterations); ``precision`` is the requested one
    (``auto`` included), resolved on each worker for its own device.
    """

    method: str
    norm: Normalization
    dtype: str
    levels: tuple[Level, ...]
    method_settings: Any = None
    model_dir: str | None = None
    psf_path: str | None = None
    view: str = "mean"
    batch: int | None = None
    device: str = "cpu"
    precision: str = "auto"
    compile: bool = False
    skip_background: bool = False
    empty_level: float = 0.01
    torch_threads: int | None = None
    lead: tuple[int, ...] = ()
    prefix: str = ""

    @property
    def out_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def replace(self, **changes) -> TaskSpec:
        """A copy with ``changes`` (field names are checked)."""
        return dataclasses.replace(self, **changes)
