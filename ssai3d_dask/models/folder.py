"""Model folders (MODEL_DIR): what ``adapt`` and ``train-care`` write and ``restore`` reads.

A model folder holds ``model.pt`` (a checkpoint in our format, see :mod:`ssai3d_dask.models.checkpoint`,
with the manifest inside) and ``manifest.json`` (the same manifest, for people and tools), plus optional
files such as ``validation.png``. Every file is written atomically, ``manifest.json`` last, so a folder
with a manifest is complete. The manifest is versioned and names its ``kind``:

- ``adapted``: an SSAI-3D NAFNet (``ssai3d adapt``), restored with ``--method ssai3d``;
- ``care``: a CARE U-Net trained from scratch (``ssai3d train-care``), restored with ``--method care``;
- ``cyclegan``: the generator G of an OT-CycleGAN (``ssai3d train-cyclegan``), restored with
  ``--method cyclegan``.

This module is the one place that knows the layout: writing, checking, loading and the per-process
(per-worker) cache that lets every region of a restoration reuse one loaded model.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ssai3d_dask.errors import CheckpointError, SettingsError, VolumeError
from ssai3d_dask.io.files import check_creatable, write_json, write_with
from ssai3d_dask.models.checkpoint import load_network, save_network
from ssai3d_dask.models.manifest import FOLDER_VERSION, ModelManifest
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.ops.normalize import Normalization

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
#: kind -> (network in model.pt, command that makes it); the method restoring each kind says so itself
#: (:data:`ssai3d_dask.restoration.methods.REGISTRY`)
KINDS = {
    "adapted": ("nafnet", "ssai3d adapt"),
    "care": ("care-unet", "ssai3d train-care"),
    "cyclegan": ("cyclegan-generator", "ssai3d train-cyclegan"),
}
#: kind -> how the error messages name it
KIND_NAMES = {"adapted": "SSAI-3D", "care": "CARE", "cyclegan": "OT-CycleGAN"}


@dataclass
class AdaptedModel:
    """What restoration needs: the network and its manifest (normalisation, denoiser, the geometry it was
    made for)."""

    model: torch.nn.Module
    manifest: ModelManifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def norm(self) -> Normalization:
        return self.manifest.normalization

    @property
    def denoiser(self) -> Denoiser:
        return self.manifest.denoiser

    @property
    def z_factor(self) -> float:
        return self.manifest.z_factor

    @classmethod
    def load(cls, model_dir: str | Path) -> AdaptedModel:
        return load_folder(model_dir)


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / MODEL_FILE).is_file()


def _parse(raw: dict, d: Path) -> ModelManifest:
    """A folder's manifest from its JSON (folders from before kinds hold SSAI-3D models), of a known kind."""
    manifest = ModelManifest.from_dict({"kind": "adapted", **raw}, str(d))
    known = ", ".join(KINDS)
    if manifest.kind in KINDS:
        return manifest
    raise CheckpointError(f"{d} holds a model of kind {manifest.kind!r}, which this version cannot restore with "
                          f"(known: {known})")


def read_manifest(model_dir: str | Path) -> ModelManifest:
    """The folder's manifest (from ``manifest.json``, else from inside ``model.pt``), version-checked."""
    d = Path(model_dir)
    if not is_model_folder(d):
        raise SettingsError(f"{d} is not a model folder (no {MODEL_FILE}); make one with `ssai3d adapt`, "
                            f"`ssai3d train-care` or `ssai3d train-cyclegan`")
    m = d / MANIFEST_FILE
    try:
        raw = json.loads(m.read_text()) if m.exists() else load_network(d / MODEL_FILE)[1]
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{m} is not valid JSON ({exc}); the folder is damaged, adapt again") from exc
    return _parse(raw, d)


def folder_kind(model_dir: str | Path) -> str:
    return read_manifest(model_dir).kind


def check_new_folder(out_dir: str | Path | None, overwrite: bool) -> None:
    """Refuse to write a model into a non-empty folder unless ``overwrite`` (before any work starts)."""
    if out_dir is None:
        return
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VolumeError(f"model folder {out} is a file; give a folder path to --out")
    check_creatable(out, "model folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VolumeError(f"model folder {out_dir} already exists; pass --overwrite or another --out")


def write_folder(out_dir: str | Path, model: torch.nn.Module, manifest: ModelManifest,
                 extra_files: dict[str, Callable[[Path], object]] | None = None) -> Path:
    """Write ``model.pt``, the extra files (name -> writer of a path) and ``manifest.json`` (last)."""
    if manifest.kind not in KINDS:
        raise ValueError(f"manifest kind must be one of {list(KINDS)}, got {manifest.kind!r}")
    record = manifest.replace(format_version=FOLDER_VERSION).to_dict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until the manifest is back
    save_network(model, out / MODEL_FILE, record)
    for name, writer in (extra_files or {}).items():
        write_with(out / name, writer)
    write_json(out / MANIFEST_FILE, record)
    return out


def load_folder(model_dir: str | Path) -> AdaptedModel:
    """Load a model folder: the network (float32, eval, CPU) with its manifest."""
    d = Path(model_dir)
    manifest = read_manifest(d)
    model, inner = load_network(d / MODEL_FILE, expect=KINDS[manifest.kind][0])
    if inner:
        manifest = _parse(inner, d)
    if manifest.kind == "adapted":
        model.set_pool_window(manifest.pool_window_px or model.local_window())
    return AdaptedModel(model, manifest)


# --- the per-channel layout: MODEL_DIR, or MODEL_DIR/c{c}, or MODEL_DIR/t{t}/c{c} ---------------------------

def slice_subfolder(channels, t: int | None, c: int | None, per_time: bool) -> str:
    """Where the model of slice (t, c) lives inside MODEL_DIR: ``c{c}`` per channel when several channels
    are restored, ``t{t}/...`` with per-time adaptation, MODEL_DIR itself (``""``) for one channel."""
    parts = [f"t{t}"] if per_time and t is not None else []
    if channels is not None and len(channels) > 1:
        parts.append(f"c{c}")
    return "/".join(parts)


def slice_folders(model_dir: str | Path | None, keys, channels, check: Callable | None = None) -> dict | None:
    """The model folder of every (t, c) slice in ``keys`` under a folder of per-slice models (the layout of
    :func:`slice_subfolder`: ``MODEL_DIR/t{t}/c{c}``, else ``MODEL_DIR/t{t}``, else ``MODEL_DIR/c{c}``).

    Returns None when ``model_dir`` is one model folder (or none, or holds no model at all), after
    ``check(model_dir)``; raises SettingsError naming the slices without a model. ``check`` (the restoring
    method's, which says what is wrong with a folder) is called on every folder found.
    """
    check = check or (lambda d: None)
    if model_dir is None or is_model_folder(model_dir) or not any(Path(model_dir).glob(f"**/{MODEL_FILE}")):
        check(model_dir)
        if model_dir is not None and is_model_folder(model_dir) and channels is not None and len(channels) > 1:
            raise SettingsError(f"{model_dir} holds one model, this input has channels {channels}: channels "
                                f"differ, so each needs its own adaptation (`ssai3d run` or `ssai3d adapt` on the "
                                f"whole input write MODEL_DIR/c0, c1, ...); or choose one with --channel")
        return None
    root, found, missing = Path(model_dir), {}, []
    for t, c in keys:
        candidates = ([root / f"t{t}" / f"c{c}", root / f"t{t}"] if t is not None else []) + [root / f"c{c}"]
        hit = next((d for d in candidates if is_model_folder(d)), None)
        if hit is None:
            missing.append(f"c{c}" if t is None else f"t{t}/c{c}")
        found[(t, c)] = hit
    if missing:
        have = sorted(str(p.relative_to(root).parent) for p in root.glob(f"**/{MODEL_FILE}"))
        raise SettingsError(f"{model_dir} has no model for {', '.join(missing)} (it holds {', '.join(have) or 'none'}); "
                            f"adapt those channels (`ssai3d adapt INPUT {model_dir} --channel ...`) or select "
                            f"the channels it has with --channel")
    for folder in dict.fromkeys(found.values()):
        check(folder)
    return found


_CACHE: dict = {}
_LOCK = threading.Lock()


def cached_folder(model_dir: str | Path) -> AdaptedModel:
    """Load a model folder once per process (per worker) and reuse it for every region.

    Keyed by path and modification time, so a folder rewritten by a new ``adapt`` is loaded afresh.
    """
    path = Path(model_dir).resolve()
    key = (str(path), (path / MODEL_FILE).stat().st_mtime_ns)
    with _LOCK:
        if key not in _CACHE:
            logger.debug("loading model %s in process %d", path, os.getpid())
            _CACHE[key] = load_folder(path)
        return _CACHE[key]
