"""The model manifest: what a model folder says about its network, typed, versioned, read and written here.

Every trainer (``ssai3d adapt``, ``train-care``, ``train-cyclegan``) fills a :class:`ModelManifest`; the
folder (:mod:`ssai3d_dask.models.folder`) writes it as ``manifest.json`` and inside ``model.pt``. On disk it
is one flat JSON object: the typed fields below, and beside them the records one kind keeps for people
and tools (``extra``: the layers an adaptation chose with their metrics, the PSF bank, timings, ...).
A manifest from a newer package (a higher ``format_version``) is refused, not misread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ssai3d_dask.errors import CheckpointError
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.ops.normalize import Normalization

#: Version of the manifest layout (and of the model folder around it).
FOLDER_VERSION = 1


@dataclass(frozen=True)
class InputRef:
    """The input a model was trained on, or a volume was restored from."""

    source: str
    shape: tuple[int, ...]
    voxel_size_um: tuple[float, ...]
    selection: Any = None

    @classmethod
    def of(cls, vol) -> InputRef:
        """The reference of a :class:`~ssai3d_dask.io.volume.Volume`."""
        return cls(str(vol.source), tuple(int(s) for s in vol.shape), tuple(float(v) for v in vol.voxel_size_um),
                   vol.selection)

    def replace_source(self, source) -> InputRef:
        """The same reference under another name (a dataset's path for the volume of one of its slices)."""
        return dataclasses.replace(self, source=str(source))

    def to_dict(self) -> dict:
        return {"source": self.source, "shape": list(self.shape), "voxel_size_um": list(self.voxel_size_um),
                "selection": self.selection}

    @classmethod
    def from_dict(cls, d: dict | None) -> InputRef | None:
        if not d:
            return None
        return cls(str(d["source"]), tuple(d["shape"]), tuple(d["voxel_size_um"]), d.get("selection"))


@dataclass(frozen=True)
class ModelManifest:
    """What restoration reads from a model folder, and the record of how the model was made.

    ``kind`` is the folder kind (``adapted``, ``care``, ``cyclegan``); ``z_factor`` the dz/dx it was made
    for; ``normalization`` and ``denoiser`` how its input is prepared. ``pool_window_px`` and ``reach`` (a
    NAFNet's local pooling window and its measured reach) and ``reach_px`` (a receptive radius) set the halo.
    """

    kind: str
    z_factor: float
    normalization: Normalization
    denoiser: Denoiser = field(default_factory=Denoiser)
    input: InputRef | None = None
    settings: dict | None = None
    history: dict | None = None
    package_version: str | None = None
    pool_window_px: int | None = None
    reach: dict | None = None
    reach_px: int | None = None
    extra: dict = field(default_factory=dict)
    format_version: int = FOLDER_VERSION

    def to_dict(self) -> dict:
        """The flat JSON object of ``manifest.json``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["normalization"] = self.normalization.to_dict()
        d["denoiser"] = self.denoiser.to_dict()
        d["input"] = self.input.to_dict() if self.input else None
        clash = set(self.extra) & set(d)
        if clash:
            raise ValueError(f"manifest extra records {sorted(clash)} would hide typed fields")
        return {k: v for k, v in d.items() if v is not None} | self.extra

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> ModelManifest:
        """Read a manifest written by :meth:`to_dict` (or by an older package: missing fields take defaults)."""
        d = dict(d)
        version = int(d.pop("format_version", 1))
        if version > FOLDER_VERSION:
            raise CheckpointError(f"{where} was written by a newer ssai3d-dask (model folder version {version}); "
                                  f"upgrade the package")
        try:
            known = {f.name for f in dataclasses.fields(cls)} - {"extra", "format_version"}
            typed = {k: d.pop(k) for k in list(d) if k in known}
            typed["normalization"] = Normalization.from_dict(typed["normalization"])
            typed["denoiser"] = Denoiser.from_dict(typed.get("denoiser"))
            typed["input"] = InputRef.from_dict(typed.get("input"))
            typed["z_factor"] = float(typed["z_factor"])
            return cls(**typed, extra=d)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} is not a model manifest ({type(exc).__name__}: {exc}); the folder is "
                                  f"damaged or was not written by ssai3d-dask") from exc

    def replace(self, **changes) -> ModelManifest:
        return dataclasses.replace(self, **changes)
