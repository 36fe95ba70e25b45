"""Settings of every stage as validated, versioned models, and the settings file.

Each model is checked when it is built: a wrong value raises :class:`~ssai3d_dask.errors.SettingsError`
naming the field and the fix, before any file is created or any voxel is read. Checks that need the
volume (patch size against the lateral size, the z step) are ``check_volume(vol)``.

Pydantic (as CAREamics does) rather than dataclasses: one declaration gives types, defaults, the help
text of the CLI options (:mod:`ssai3d_dask.cli.options` derives them from the fields), the validation and
the YAML round trip.

A settings file (YAML or TOML) holds one section per command::

    ssai3d_config: 1          # the file format version
    adapt:   {n_patches: 256, finetune: {iterations: 300}}
    restore: {method: {name: rl, psf_sigma_um: [0.4, 0.1, 0.1]}, chunks: [64, 128, 128]}
    care:    {psf_sigma_um: [0.4, 0.05, 0.05]}
    cluster: {cluster: slurm, jobs: 8}

``--config FILE`` reads it (options on the command line win), ``--print-config`` writes the effective
settings in the same form.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.settings.adaptation import (CYCLEGAN_PRESETS, AdaptSettings, CareSettings, CycleGANSettings,
                                             FinetuneSettings, PretrainSettings)
from ssai3d_dask.settings.cluster import BATCH_SYSTEMS, ClusterSettings
from ssai3d_dask.settings.base import (CONFIG_VERSION, Device, Precision, Settings, flag_of,
                                       resolve_device)
from ssai3d_dask.settings.restoration import (DEFAULT_METHOD, METHOD_SETTINGS, METHODS, InterpMethod, NetworkMethod, RestoreSettings,
                                              RLMethod)

__all__ = ["BATCH_SYSTEMS", "ClusterSettings", "CONFIG_VERSION", "CYCLEGAN_PRESETS", "DEFAULT_METHOD", "METHOD_SETTINGS", "METHODS", "SECTIONS", "AdaptSettings",
           "CareSettings", "CycleGANSettings", "Device", "FinetuneSettings", "InterpMethod", "NetworkMethod",
           "Precision", "PretrainSettings", "RLMethod", "RestoreSettings", "Settings", "dump_config", "flag_of",
           "read_config", "resolve_device"]

# --- the settings file ------------------------------------------------------------------------------

#: Section name -> settings model.
SECTIONS: dict[str, type[Settings]] = {"adapt": AdaptSettings, "restore": RestoreSettings, "care": CareSettings,
                                       "cyclegan": CycleGANSettings, "pretrain": PretrainSettings,
                                       "cluster": ClusterSettings}


def read_config(path: str | Path) -> dict[str, dict]:
    """The sections of a settings file (YAML, or TOML by its ``.toml`` suffix), version-checked."""
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"settings file {p} not found; write one with --print-config")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # the parsers' own error types; reported on one line
        raise SettingsError(f"cannot parse settings file {p}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {p} must hold a mapping of sections ({', '.join(SECTIONS)})")
    version = data.pop("ssai3d_config", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise SettingsError(f"settings file {p} has format version {version!r}; this ssai3d-dask reads up to "
                            f"{CONFIG_VERSION} (upgrade the package)")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise SettingsError(f"settings file {p}: unknown section(s) {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(SECTIONS)}")
    for name, section in data.items():
        if not isinstance(section, dict):
            raise SettingsError(f"settings file {p}: section {name} must be a mapping of settings")
    return data


def dump_config(sections: dict[str, Settings]) -> str:
    """YAML of the given settings, readable by :func:`read_config`."""
    import yaml

    data: dict[str, Any] = {"ssai3d_config": CONFIG_VERSION}
    data.update({name: s.to_dict() for name, s in sections.items()})
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
