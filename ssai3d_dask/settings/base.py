"""The settings models' common base: validation messages naming the flag, the YAML round trip, the
device and precision choices, and the patch-size check every training stage shares."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ssai3d_dask.errors import SettingsError, VolumeError

logger = logging.getLogger(__name__)

#: Version of the settings file layout.
CONFIG_VERSION = 1
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
_PRECISION_HELP = ("Network arithmetic: auto = bf16 autocast where the device computes bf16 fast (CUDA with bf16, "
                   "CPUs with AMX-BF16 or AVX512-BF16), fp32 elsewhere.")


def check_size(value: str | None, flag: str) -> str | None:
    """A memory size option (``4GiB``, ``500MB``) or ``auto``/None, else a ValueError naming ``flag``."""
    if value is None or value == "auto":
        return value
    from dask.utils import parse_bytes

    try:
        ok = parse_bytes(value) > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{flag} {value!r} is not a size; give e.g. 4GiB, 500MB or auto")
    return value


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def flag_of(model: type[BaseModel], name: str) -> str:
    """The command-line option of a field: ``--field-name`` unless the field names another."""
    info = model.model_fields.get(name)
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("flag", "--" + name.replace("_", "-")))


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(x) for x in e["loc"] if not isinstance(x, int)]
        owner = model
        for x in loc[:-1]:
            sub = owner.model_fields.get(x)
            owner = sub.annotation if sub is not None and isinstance(sub.annotation, type) else owner
        where = (".".join(loc) + (f" ({flag_of(owner, loc[-1])})" if loc[-1] in owner.model_fields else "")) if loc else ""
        msg = {"extra_forbidden": "unknown setting (--print-config lists the known ones)",
               "missing": "required, give it"}.get(e["type"], e["msg"].removeprefix("Value error, "))
        if msg.startswith("invalid ") and ": " in msg:  # a nested settings model's own message
            parts.append(".".join(loc) + "." + msg.split(": ", 1)[1] if loc else msg.split(": ", 1)[1])
            continue
        parts.append(f"{where}: {msg}" if where else msg)
    return f"invalid {model.__name__}: " + "; ".join(parts)


class Settings(BaseModel):
    """Base: unknown fields are errors (a typo in a settings file must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, type(self))) from None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _check_patch(patch_px: int, multiple: int, vol) -> None:
    from ssai3d_dask.geometry import check_anisotropy

    check_anisotropy(vol.voxel_size_um, vol.source)
    if min(vol.shape[1:]) < max(16, multiple):
        raise VolumeError(f"{vol.source}: lateral size {tuple(vol.shape[1:])} is below the smallest training patch "
                          f"({max(16, multiple)} px); the stack must be at least that wide in y and x")
    if patch_px > min(vol.shape[1:]):
        raise SettingsError(f"patch size {patch_px} px exceeds the lateral size {tuple(vol.shape[1:])}; "
                            f"pass a smaller --patch-px (multiple of {multiple})")
    if vol.anisotropy < 0.95:
        raise VolumeError(f"z step ({vol.voxel_size_um[0]} um) is finer than x ({vol.voxel_size_um[2]} um); "
                          f"check --voxel-size (z, y, x order)")


class _PatchSettings(Settings):
    """Settings that train on lateral patches of ``patch_px`` px, a multiple of :meth:`patch_multiple`."""

    def patch_multiple(self) -> int:
        raise NotImplementedError

    def fitted(self, vol) -> "_PatchSettings":
        """These settings with the default patch size shrunk to the largest multiple of :meth:`patch_multiple`
        that fits the stack's lateral size, when the patch was not chosen (command line or settings file); else
        unchanged.

        A 64 x 64 stack then runs with the defaults; a patch the user chose stays theirs, and one that does not
        fit is refused by :meth:`check_volume`.
        """
        multiple = self.patch_multiple()
        fit = min(vol.shape[1:]) // multiple * multiple
        if "patch_px" in self.model_fields_set or self.patch_px <= fit or fit < 16:
            return self
        logger.info("patch %d px -> %d px: the default does not fit the lateral size %s", self.patch_px, fit,
                    tuple(vol.shape[1:]))
        return self.model_copy(update={"patch_px": fit})

    def check_volume(self, vol) -> None:
        _check_patch(self.patch_px, self.patch_multiple(), vol)


