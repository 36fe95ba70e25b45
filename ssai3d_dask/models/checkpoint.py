"""Checkpoint files: our one format for every network, and official BasicSR NAFNet checkpoints.

Checkpoints are data, not code: every file is read with
``torch.load(..., weights_only=True)``, which refuses pickled objects.

Our format is a dict, the same for every network the package trains::

    {"format": "ssai3d-dask/model", "format_version": 2, "network": "nafnet" | "care-unet" | "cyclegan-generator" | "surgeon",
     "config": {...constructor arguments...}, "state_dict": {...}, "manifest": "<json>"}

Version 1 files (NAFNet only, no ``network``) and the earlier per-network formats
(``ssai3d-dask/care``, ``ssai3d-dask/surgeon``) still load.

The official format (BasicSR) is ``{"params": state_dict}`` (sometimes
``params_ema``); its architecture is inferred from the tensor shapes or given
as a preset name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ssai3d_dask.errors import CheckpointError
from ssai3d_dask.io.files import write_with
from ssai3d_dask.models.nafnet import PRESETS, NAFNet, NAFNetConfig, build
from ssai3d_dask.models.surgeon import Surgeon
from ssai3d_dask.models.unet import CareUNet, UNet3D

logger = logging.getLogger(__name__)

FORMAT = "ssai3d-dask/model"
FORMAT_VERSION = 2
#: Earlier per-network formats, read for compatibility.
_LEGACY_FORMATS = {"ssai3d-dask/care": "care-unet", "ssai3d-dask/surgeon": "surgeon"}
#: Name of the shipped base model inside ``ssai3d_dask/weights``.
SHIPPED_BASE = "nafnet-small-base.pt"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_path(name: str = SHIPPED_BASE) -> Path:
    """Path of a file shipped in ``ssai3d_dask/weights``."""
    return Path(str(resources.files("ssai3d_dask") / "weights" / name))


def read_state(path: str | Path, keys: Sequence[str], map_location: str = "cpu") -> dict:
    """A training-state file (``*.resume.pt``) with the same refusals as a checkpoint, and its keys checked."""
    state = _read(Path(path), map_location)
    missing = [k for k in keys if not isinstance(state, Mapping) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a resume file of this command (no {', '.join(missing)}); delete it "
                              f"to start afresh, or pass --overwrite")
    return dict(state)


def _read(path: Path, map_location: str = "cpu") -> Any:
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path}; give an existing .pt/.pth file or a preset name "
            f"({', '.join(['base', *PRESETS])})"
        )
    if path.is_dir():
        cand = path / "model.pt"
        if not cand.exists():
            raise CheckpointError(f"{path} is a folder without model.pt; give the checkpoint file itself")
        path = cand
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a class or function reference: damaged or not torch
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (damaged, or another format)") from exc
        raise CheckpointError(
            f"refused to load {path}: it contains pickled code or objects, which may run arbitrary "
            f"code; only plain tensor checkpoints are accepted ({str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({exc})") from exc


def infer_config(state_dict: Mapping[str, torch.Tensor], train_size: int = 256) -> NAFNetConfig:
    """Infer a NAFNet architecture from official parameter names and shapes."""
    if "intro.weight" not in state_dict:
        raise CheckpointError(
            "cannot infer the architecture: no 'intro.weight' key, so this is not a NAFNet state dict"
        )

    def count(prefix: str) -> list[int]:
        levels: dict[int, set[int]] = {}
        for key in state_dict:
            m = re.match(rf"{prefix}\.(\d+)\.(\d+)\.", key)
            if m:
                levels.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        n_levels = 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.(\d+)", k))),
                           default=-1)
        return [len(levels.get(i, ())) for i in range(n_levels)]

    middle = {int(m.group(1)) for k in state_dict if (m := re.match(r"middle_blks\.(\d+)\.", k))}
    intro = state_dict["intro.weight"]
    return NAFNetConfig(
        width=int(intro.shape[0]),
        enc_blk_nums=tuple(count("encoders")),
        middle_blk_num=len(middle),
        dec_blk_nums=tuple(count("decoders")),
        img_channel=int(intro.shape[1]),
        train_size=train_size,
    )


def _matching_presets(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    out = []
    for name, cfg in PRESETS.items():
        ref = NAFNet(cfg).state_dict()
        if set(ref) == set(state_dict) and all(ref[k].shape == state_dict[k].shape for k in ref):
            out.append(name)
    return out


def load_state_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load with an error that names missing/unexpected keys and a fitting preset."""
    ref = model.state_dict()
    missing = sorted(set(ref) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(ref))
    wrong = sorted(k for k in set(ref) & set(state_dict) if ref[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        fit = _matching_presets(state_dict)
        hint = f"preset {fit[0]!r} fits this checkpoint" if fit else "no preset fits; pass the matching config"
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(f"architecture mismatch loading {source}: {'; '.join(parts)}; {hint}")
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state_dict.items()}, strict=True)


def load_model(
    path_or_preset: str | Path = "base", preset: str | None = None, train_size: int | None = None
) -> tuple[NAFNet, dict]:
    """Load a NAFNet and its manifest.

    Parameters
    ----------
    path_or_preset : str or Path
        ``"base"`` for the shipped base model, a preset name for random
        initialisation, a file in our format, an official BasicSR checkpoint
        (``params`` / ``params_ema``), or a model folder holding ``model.pt``.
    preset : str, optional
        Architecture for official checkpoints; inferred from shapes if None.
    train_size : int, optional
        Training patch size (px) for the TLC window of official checkpoints
        (default 256, NAFNet's).

    Returns
    -------
    model : NAFNet
        In eval mode, float32, on CPU.
    manifest : dict
        What is known about the weights (empty for official checkpoints).
    """
    if str(path_or_preset) == "base":
        path_or_preset = shipped_path()
    elif isinstance(path_or_preset, str) and path_or_preset in PRESETS and not Path(path_or_preset).exists():
        model = build(path_or_preset).eval()
        return model, {"preset": path_or_preset, "weights": "random initialisation"}
    path = Path(path_or_preset)
    obj = _read(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} is not a checkpoint dict (got {type(obj).__name__})")
    if _network_of(obj, path) is not None:
        model, manifest = _decode(obj, path, "nafnet")
        manifest.setdefault("sha256", sha256_file(path))
        logger.info("loaded model %s (%s)", path, manifest.get("preset", model.config))
        return model.eval(), manifest
    key = next((k for k in ("params", "params_ema") if k in obj), None)
    state = obj[key] if key else obj
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} has no 'params' state dict of tensors; expected an ssai3d-dask or BasicSR checkpoint"
        )
    if preset is not None:
        base = PRESETS[preset]
        cfg = NAFNetConfig(**{**base.to_dict(), "train_size": train_size or base.train_size})
    else:
        cfg = infer_config(state, train_size or 256)
    manifest = {"source": str(path), "format": "basicsr", "key": key or "<root>"}
    model = NAFNet(cfg)
    load_state_strict(model, state, str(path))
    manifest.setdefault("sha256", sha256_file(path))
    logger.info("loaded model %s (%s)", path, manifest.get("preset", cfg))
    return model.eval(), manifest


#: Every network our format holds: name -> (class, its constructor arguments from an instance).
NETWORKS: dict[str, tuple[type[torch.nn.Module], Any]] = {
    "nafnet": (NAFNet, lambda m: m.config.to_dict()),
    "care-unet": (CareUNet, lambda m: dict(m.config)),
    "cyclegan-generator": (UNet3D, lambda m: dict(m.config)),
    "surgeon": (Surgeon, lambda m: {}),
}


def _network_of(obj: Mapping, path: Path) -> str | None:
    """The network an our-format checkpoint holds, None for other (official) checkpoints."""
    fmt = obj.get("format")
    if fmt in _LEGACY_FORMATS:
        return _LEGACY_FORMATS[fmt]
    if fmt != FORMAT:
        return None
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer ssai3d-dask (checkpoint format "
                              f"{obj.get('format_version')}); upgrade the package")
    return str(obj.get("network", "nafnet"))


def _decode(obj: Mapping, path: Path, expect: str | None) -> tuple[torch.nn.Module, dict]:
    name = _network_of(obj, path)
    if name not in NETWORKS:
        raise CheckpointError(f"{path} holds an unknown network {name!r}; upgrade ssai3d-dask")
    if expect is not None and name != expect:
        raise CheckpointError(f"{path} holds a {name} network where a {expect} was expected")
    cls, _ = NETWORKS[name]
    config = obj.get("config") or {}
    model = cls(NAFNetConfig(**config)) if cls is NAFNet else cls(**config)
    load_state_strict(model, obj["state_dict"], str(path))
    manifest = json.loads(obj.get("manifest") or "{}")
    if isinstance(manifest.get("reach"), dict):  # measured for these weights (ssai3d_dask.models.reach)
        model.reach = dict(manifest["reach"])
    return model.eval(), manifest


def load_network(path: str | Path, expect: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Any network in our format (``expect``: the network name it must hold). Float32, eval mode, CPU."""
    path = Path(path)
    obj = _read(path)
    if not isinstance(obj, Mapping) or _network_of(obj, path) is None:
        raise CheckpointError(f"{path} is not an ssai3d-dask checkpoint"
                              + (f" of a {expect} network" if expect else ""))
    return _decode(obj, path, expect)


def save_network(model: torch.nn.Module, path: str | Path, manifest: dict | None = None, half: bool = False) -> Path:
    """Write any network of :data:`NETWORKS` in our format, atomically.

    ``half`` stores float16 weights (half the size; loaded back as float32).
    """
    name = next((n for n, (cls, _) in NETWORKS.items() if type(model) is cls), None)
    if name is None:
        raise TypeError(f"no checkpoint format for {type(model).__name__}")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "format_version": FORMAT_VERSION, "network": name,
           "config": NETWORKS[name][1](model), "state_dict": state,
           "manifest": json.dumps(manifest or {}, default=str)}
    return write_with(path, lambda tmp: torch.save(obj, tmp))
