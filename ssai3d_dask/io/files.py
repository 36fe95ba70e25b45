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
