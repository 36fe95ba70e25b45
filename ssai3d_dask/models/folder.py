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
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.ops.normalize import Normalization

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
#: Version of the manifest layout; a folder from a newer package is refused, not misread.
FOLDER_VERSION = 1
#: kind -> (network in model.pt, restore method, command that makes it)
KINDS = {
    "adapted": ("nafnet", "ssai3d", "ssai3d adapt"),
    "care": ("care-unet", "care", "ssai3d train-care"),
    "cyclegan": ("cyclegan-generator", "cyclegan", "ssai3d train-cyclegan"),
}
#: kind -> how the error messages name it
KIND_NAMES = {"adapted": "SSAI-3D", "care": "CARE", "cyclegan": "OT-CycleGAN"}


@dataclass
class AdaptedModel:
    """What restoration needs: the network, normalisation, denoiser, and the geometry it was adapted for."""

    model: torch.nn.Module
    norm: Normalization
    denoiser: Denoiser
    z_factor: float
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "adapted")

    @classmethod
    def load(cls, model_dir: str | Path) -> AdaptedModel:
        return load_folder(model_dir)


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / MODEL_FILE).is_file()


def read_manifest(model_dir: str | Path) -> dict:
    """The folder's manifest (from ``manifest.json``, else from inside ``model.pt``), version-checked."""
    d = Path(model_dir)
    if not is_model_folder(d):
        raise SettingsError(f"{d} is not a model folder (no {MODEL_FILE}); make one with `ssai3d adapt`, "
                            f"`ssai3d train-care` or `ssai3d train-cyclegan`")
    m = d / MANIFEST_FILE
    try:
        manifest = json.loads(m.read_text()) if m.exists() else load_network(d / MODEL_FILE)[1]
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{m} is not valid JSON ({exc}); the folder is damaged, adapt again") from exc
    if int(manifest.get("format_version", 1)) > FOLDER_VERSION:
        raise CheckpointError(f"{d} was written by a newer ssai3d-dask (model folder version "
                              f"{manifest['format_version']}); upgrade the package")
    if manifest.get("kind", "adapted") not in KINDS:
        raise CheckpointError(f"{d} holds a model of kind {manifest.get('kind')!r}, which this version cannot "
                              f"restore with (known: {', '.join(KINDS)})")
    return manifest


def folder_kind(model_dir: str | Path) -> str:
    return read_manifest(model_dir).get("kind", "adapted")


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


def write_folder(out_dir: str | Path, model: torch.nn.Module, manifest: dict,
                 extra_files: dict[str, Callable[[Path], object]] | None = None) -> Path:
    """Write ``model.pt``, the extra files (name -> writer of a path) and ``manifest.json`` (last)."""
    kind = manifest.get("kind")
    if kind not in KINDS:
        raise ValueError(f"manifest kind must be one of {list(KINDS)}, got {kind!r}")
    manifest = {**manifest, "format_version": FOLDER_VERSION}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until the manifest is back
    save_network(model, out / MODEL_FILE, manifest)
    for name, writer in (extra_files or {}).items():
        write_with(out / name, writer)
    write_json(out / MANIFEST_FILE, manifest)
    return out


def check_folder(model_dir: str | Path | None, method: str) -> None:
    """``model_dir`` exists and holds the kind of network ``method`` runs."""
    maker = next(cmd for _, m, cmd in KINDS.values() if m == method)
    if model_dir is None:
        raise SettingsError(f"method {method} needs --model MODEL_DIR (from `{maker}`)"
                            + (", or use `ssai3d run`" if method == "ssai3d" else ""))
    if not is_model_folder(model_dir):
        raise SettingsError(f"{model_dir} is not a model folder (no {MODEL_FILE}); make one with `{maker}`")
    kind = folder_kind(model_dir)
    if KINDS[kind][1] != method:
        raise SettingsError(f"{model_dir} holds a model of kind {kind} ({KIND_NAMES[kind]}), not one for --method "
                            f"{method}; "
                            f"use --method {KINDS[kind][1]} with it")


def load_folder(model_dir: str | Path) -> AdaptedModel:
    """Load a model folder: the network (float32, eval, CPU) with its normalisation and denoiser."""
    d = Path(model_dir)
    manifest = read_manifest(d)
    kind = manifest.get("kind", "adapted")
    model, inner = load_network(d / MODEL_FILE, expect=KINDS[kind][0])
    manifest = inner or manifest
    if kind == "adapted":
        model.set_pool_window(manifest.get("pool_window_px", model.local_window()))
    denoiser = Denoiser.from_dict(manifest.get("denoiser")) if kind == "adapted" else Denoiser()
    return AdaptedModel(model, Normalization.from_dict(manifest["normalization"]), denoiser,
                        float(manifest["z_factor"]), manifest)


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
