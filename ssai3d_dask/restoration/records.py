"""What a restoration records about itself, typed and versioned: the run record (what must not change
between a run and its ``--resume``, ``.ssai3d/run.json``) and the provenance (how the output was made, in
the output's ``ssai3d`` attributes). Both are written through :meth:`to_dict` and read back with
:func:`read_provenance` / :meth:`RunRecord.from_dict`; a record from a newer package is refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.models.manifest import InputRef
from ssai3d_dask.ops.normalize import Normalization

#: Version of both records' layout.
RECORD_VERSION = 1


def _check_version(d: dict, what: str) -> dict:
    d = dict(d)
    version = int(d.pop("record_version", 1))
    if version > RECORD_VERSION:
        raise VolumeError(f"{what} was written by a newer ssai3d-dask (record version {version}); upgrade the package")
    return d


@dataclass(frozen=True)
class SliceRecord:
    """One (t, c) slice of the output: its block-id prefix, model folder and normalisation."""

    prefix: str
    model_dir: str | None
    normalization: Normalization

    def to_dict(self) -> dict:
        return {"prefix": self.prefix, "model_dir": self.model_dir, "normalization": self.normalization.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> SliceRecord:
        return cls(d["prefix"], d.get("model_dir"), Normalization.from_dict(d["normalization"]))


@dataclass(frozen=True)
class RunRecord:
    """What must not change between a run and its ``--resume`` (results would otherwise mix). Compared key
    by key by :class:`~ssai3d_dask.io.omezarr.MultiscaleWriter`, which names the first that differs."""

    method: str
    method_settings: dict
    model_dir: str | None
    halo: int
    view: str
    normalization: Normalization
    dtype: str
    skip_empty: bool
    skip_background: bool
    empty_level: float
    psf: list | None  # shape, sum and sum of squares of the PSF: the same PSF, not just the same file name
    input: InputRef
    slices: tuple[SliceRecord, ...] = ()
    record_version: int = RECORD_VERSION

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return d | {"normalization": self.normalization.to_dict(), "input": self.input.to_dict(),
                    "slices": [s.to_dict() for s in self.slices]}

    @classmethod
    def from_dict(cls, d: dict) -> RunRecord:
        d = _check_version(d, "the output's run record")
        return cls(**d | {"normalization": Normalization.from_dict(d["normalization"]),
                          "input": InputRef.from_dict(d["input"]),
                          "slices": tuple(SliceRecord.from_dict(s) for s in d.get("slices", ()))})


@dataclass(frozen=True)
class Provenance:
    """How an output was made, kept in its ``ssai3d`` attributes: the package, input, method and model,
    settings (with the halo used), normalisation, precision, regions and the work it took."""

    package_version: str
    input: InputRef
    axes: str
    times: Any
    channels: Any
    method: str
    model_dir: str | None
    model: dict | None
    settings: dict
    normalization: Normalization
    precision: dict
    regions: dict
    work: dict
    slices: tuple[SliceRecord, ...] | None = None
    psf_shape: list | None = None
    record_version: int = RECORD_VERSION

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["input"] = self.input.to_dict() | {"axes": self.axes, "times": self.times, "channels": self.channels}
        for k in ("axes", "times", "channels"):
            del d[k]
        d["normalization"] = self.normalization.to_dict()
        d["slices"] = None if self.slices is None else [s.to_dict() for s in self.slices]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Provenance:
        d = _check_version(d, "the output's provenance")
        inp = dict(d.pop("input"))
        lead = {k: inp.pop(k, None) for k in ("axes", "times", "channels")}
        slices = d.pop("slices", None)
        return cls(**d | lead | {"input": InputRef.from_dict(inp), "axes": lead["axes"] or "",
                                 "normalization": Normalization.from_dict(d["normalization"]),
                                 "slices": None if slices is None else tuple(SliceRecord.from_dict(s) for s in slices)})


def read_provenance(out: str | Path) -> Provenance:
    """The provenance of a restored output (an OME-Zarr written by ``ssai3d restore`` or ``run``)."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a missing or foreign store
        raise VolumeError(f"{out} is not a readable OME-Zarr ({type(exc).__name__}: {exc})") from exc
    if "ssai3d" not in attrs:
        raise VolumeError(f"{out} has no ssai3d provenance: it was not written by ssai3d restore, or the run "
                          f"did not finish (resume it with --resume)")
    return Provenance.from_dict(attrs["ssai3d"])


__all__ = ["RECORD_VERSION", "Provenance", "RunRecord", "SliceRecord", "read_provenance"]
