"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the package writes outside the zarr arrays (model checkpoints, manifests, validation images,
run and completion records) goes through here: written to a hidden temporary file beside the target,
then renamed over it (atomic on POSIX file systems, including the parallel ones clusters use).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ssai3d_dask.errors import VolumeError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """JSON with non-JSON values (paths, numpy scalars) written as strings."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str))


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """``writer(tmp)`` writes the file (``torch.save``, ``fig.savefig``, ...); then it is renamed into place."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def check_creatable(path: str | Path, what: str = "output") -> None:
    """``path`` can be created or replaced: its nearest existing ancestor is a writable folder."""
    p = Path(path).absolute()
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise VolumeError(f"cannot create {what} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise VolumeError(f"cannot create {what} {path}: no write permission in {parent}")
            return


@contextmanager
def removed_on_failure(*paths: str | Path, keep: Callable[[Path], bool] | None = None) -> Iterator[None]:
    """Remove what this block created at ``paths`` (files or folders that did not exist before) if it fails.

    A command that fails then leaves nothing half-written behind; what existed before is left alone, and so
    is a new path for which ``keep(path)`` is true (one holding a resume file, say).
    """
    import shutil

    new = [Path(p) for p in paths if not Path(p).exists()]
    try:
        yield
    except BaseException:
        for p in new:
            if keep is not None and p.exists() and keep(p):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink(missing_ok=True)
        raise
