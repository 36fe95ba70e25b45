"""The contract of a restoration method, and the parts the methods share.

A method is a :class:`RestorationMethod` subclass in its own module, listed once in
:data:`ssai3d_dask.restoration.methods.REGISTRY`. The pipeline, the worker task, the dry run, the cluster
defaults and the CLI ask the method; none of them names one.

What a method declares:

- ``name`` (``--method``), ``label`` (how messages name it) and ``settings_model`` (its pydantic settings in
  :mod:`ssai3d_dask.settings.restoration`, saved with the run);
- ``folder_kind``: the kind of model folder it restores with (:mod:`ssai3d_dask.models.folder`), None for none;
- ``volume``: whether it computes on the whole extended crop (its cost is the crop's voxels) or runs a 2D
  network on XZ/YZ slices (its cost is their pixels, one pass per view);
- ``normalised``: whether it works on the normalised, denoised planes (False: in raw units, cast directly);

and what it does: :meth:`~RestorationMethod.resources` (what it computes with, made on the client),
:meth:`~RestorationMethod.halo` (how far a voxel's result reaches: block invariance),
:meth:`~RestorationMethod.load` (the same resources on a worker, cached per process) and the pure
:meth:`~RestorationMethod.compute` (an extended crop in, the restored core out).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ssai3d_dask.ops.denoise import Denoiser

if TYPE_CHECKING:
    import torch

    from ssai3d_dask.geometry import Geometry
    from ssai3d_dask.models.folder import AdaptedModel
    from ssai3d_dask.restoration.spec import TaskSpec
    from ssai3d_dask.settings import RestoreSettings


@dataclass(frozen=True)
class Resources:
    """What a method computes with: its network (with the denoiser calibrated for it) or its PSF."""

    model: torch.nn.Module | None = None
    denoiser: Denoiser = field(default_factory=Denoiser)
    psf: np.ndarray | None = None


class RestorationMethod:
    """One restoration method (see the module docstring for the contract)."""

    name: ClassVar[str]
    label: ClassVar[str]
    settings_model: ClassVar[type]
    folder_kind: ClassVar[str | None] = None
    volume: ClassVar[bool] = False
    normalised: ClassVar[bool] = True

    @property
    def uses_model(self) -> bool:
        """Whether it restores with a model folder (``--model``)."""
        return self.folder_kind is not None

    def check(self, settings: RestoreSettings) -> None:
        """Refuse settings this method cannot honour (raise :class:`~ssai3d_dask.errors.SettingsError`)."""

    def resources(self, settings: RestoreSettings, geometry: Geometry, adapted: AdaptedModel | None) -> Resources:
        """What :meth:`compute` needs, made on the client from the settings and the loaded model folder."""
        return Resources()

    def halo(self, resources: Resources) -> int:
        """Output voxels around a region that its core depends on (a multiple of 16)."""
        return 0

    def load(self, spec: TaskSpec) -> Resources:
        """:meth:`resources` on a worker, from the task spec (loaded once per process and reused)."""
        return Resources()

    def compute(self, ext: np.ndarray, core_offset: Sequence[int], core_shape: Sequence[int], spec: TaskSpec,
                resources: Resources) -> np.ndarray:
        """The restored core of an extended crop (the z-resampled region with its halo): float32 in
        normalised units, or, for a method that is not :attr:`normalised`, the output itself in
        ``spec.dtype``. Pure: no I/O."""
        raise NotImplementedError

    def work_view(self, view: str) -> str:
        """How :func:`~ssai3d_dask.restoration.plan.region_work` counts this method's work: ``"volume"``
        (voxels of the extended crop) or the view whose slice passes it runs."""
        return "volume" if self.volume else view

    def default_workers(self, cores: int) -> int:
        """LocalCluster workers on a machine with ``cores`` cores and no GPU: min(4, cores // 2), at least 1
        (a torch pool per worker uses the other cores)."""
        return max(1, min(4, cores // 2))

    def provenance(self, adapted: AdaptedModel | None) -> dict | None:
        """What the run's provenance records about the model (None: no model)."""
        return None

    def __repr__(self) -> str:
        return f"<restoration method {self.name}>"


def cpu_cores() -> int:
    return os.cpu_count() or 1
