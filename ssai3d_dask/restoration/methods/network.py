"""What the three network methods share: a model folder, its normalisation and denoiser, a halo from the
network's measured reach, and the device, precision and compilation of the task spec."""

from __future__ import annotations

import torch

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.models.folder import KIND_NAMES, KINDS, MODEL_FILE, cached_folder, folder_kind, is_model_folder
from ssai3d_dask.models.precision import prepare, resolve_precision
from ssai3d_dask.restoration.kernels import default_halo, restore_block
from ssai3d_dask.restoration.methods.base import Resources, RestorationMethod
from ssai3d_dask.settings import NetworkMethod


class NetworkRestoration(RestorationMethod):
    """A network from a model folder of kind :attr:`folder_kind`, run on XZ/YZ slices (2D) by default."""

    settings_model = NetworkMethod

    def check_model(self, model_dir) -> None:
        """``model_dir`` exists and holds the kind of network this method runs (else a SettingsError saying
        which command makes one, or which method restores with the one it holds)."""
        from ssai3d_dask.restoration.methods import method_for_kind

        maker = KINDS[self.folder_kind][1]
        if model_dir is None:
            raise SettingsError(f"method {self.name} needs --model MODEL_DIR (from `{maker}`)"
                                + (", or use `ssai3d run`" if self.folder_kind == "adapted" else ""))
        if not is_model_folder(model_dir):
            raise SettingsError(f"{model_dir} is not a model folder (no {MODEL_FILE}); make one with `{maker}`")
        kind = folder_kind(model_dir)
        if kind != self.folder_kind:
            other = method_for_kind(kind).name
            raise SettingsError(f"{model_dir} holds a model of kind {kind} ({KIND_NAMES[kind]}), not one for "
                                f"--method {self.name}; use --method {other} with it")

    def resources(self, settings, geometry, adapted):
        return Resources(adapted.model, adapted.denoiser)

    def halo(self, resources):
        return default_halo(resources.model, resources.denoiser)

    def load(self, spec):
        if spec.model_dir is None:
            return Resources()
        adapted = cached_folder(spec.model_dir)
        return Resources(adapted.model, adapted.denoiser)

    def compute(self, ext, core_offset, core_shape, spec, resources):
        if resources.model is not None:
            prepare(resources.model, spec.device)  # the cached model, moved to the device channels-last once
        return restore_block(ext, core_offset, core_shape, resources.model, spec.view, spec.batch,
                             torch.device(spec.device), resolve_precision(spec.precision, spec.device), spec.compile)

    def provenance(self, adapted):
        return {"kind": self.name, "settings": adapted.manifest.settings}
