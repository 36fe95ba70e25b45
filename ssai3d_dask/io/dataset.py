"""Whole datasets: every selected channel and time point of a 4D/5D input, as lazy 3D volumes.

A :class:`Dataset` is the input's non-spatial axes (``t`` and/or ``c``, in the input's order), the
entries selected along each, and one lazy :class:`~ssai3d_dask.io.volume.Volume` per (t, c) slice, all
opened by :func:`~ssai3d_dask.io.volume.open_volume` (so every reader, voxel-size rule and error is shared).
An axis is kept in the output when more than one entry is selected along it; selecting one channel and
one time point gives a 3D dataset and a (z, y, x) output, as restoring a single stack always has.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.tiff import TIFF_SUFFIXES
from ssai3d_dask.io.volume import LIGHTSHEET_SUFFIXES, Volume, _is_zarr, checked_datasets, open_volume, open_zarr_node, read_multiscales

logger = logging.getLogger(__name__)

#: Colours for the omero channel entries (hex RGB), in order; one channel stays white.
PALETTE = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF", "FFFFFF")


def parse_selection(text: str | int | Sequence[int] | None, size: int, flag: str) -> list[int] | None:
    """``"0,2"``, ``"1-3"``, ``"all"``, an int or a list: indices in ``range(size)``; None for all."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "all")):
        return None
    if isinstance(text, int):
        items = [text]
    elif isinstance(text, str):
        items = []
        for part in text.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if b < a:
                    raise VolumeError(f"{flag} {part}: the range ends before it starts; write it as {b}-{a}")
                items += list(range(a, b + 1))
            elif part.isdigit():
                items.append(int(part))
            else:
                raise VolumeError(f"{flag} {text!r} not understood; give indices like 0,2 or a range like 1-3 or 'all'")
    else:
        items = [int(v) for v in text]
    bad = [i for i in items if not 0 <= i < size]
    if bad:
        raise VolumeError(f"{flag} {bad[0]} out of range: this input has {size} (choose 0..{size - 1})")
    if len(set(items)) != len(items):
        raise VolumeError(f"{flag} lists an index twice ({text!r})")
    return items


def input_axes(path: str | Path, level: int = 0) -> tuple[dict[str, int], list[str | None], dict[str, Any]]:
    """Sizes of the non-spatial axes (``{"t": 3, "c": 2}`` in the input's order), channel labels from the
    input's omero metadata (None where absent) and the time axis' unit/scale. Reads metadata only."""
    p = Path(path)
    sizes: dict[str, int] = {}
    labels: list[str | None] = []
    time_meta: dict[str, Any] = {}
    if p.is_dir() and _is_zarr(p):
        node = open_zarr_node(str(p))
        if isinstance(node, zarr.Array):
            axes = "zyx" if node.ndim == 3 else "tczyx"[-node.ndim:]
            shape = node.shape
        else:
            ms = read_multiscales(node)
            if ms is None:
                return sizes, labels, time_meta
            datasets = checked_datasets(p, node, ms)
            if not 0 <= level < len(datasets):
                return sizes, labels, time_meta  # open_volume reports the bad level
            arr = node[datasets[level]["path"]]
            axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"[-arr.ndim:]]
            axes = "".join(a["name"] if isinstance(a, dict) else a for a in axes_meta)
            shape = arr.shape
            for a in axes_meta:
                if isinstance(a, dict) and a.get("name") == "t" and a.get("unit"):
                    time_meta["unit"] = a["unit"]
            attrs = dict(node.attrs)
            omero = attrs.get("ome", attrs).get("omero") or attrs.get("omero") or {}
            labels = [ch.get("label") for ch in omero.get("channels", [])]
        sizes = {a: int(n) for a, n in zip(axes, shape) if a in "tc"}
    elif p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                axes = series.axes.lower()
                shape = series.shape
        except Exception:  # open_volume gives the readable error
            return sizes, labels, time_meta
        sizes = {a: int(n) for a, n in zip(axes, shape) if a in "tc"}
    elif p.is_file() and p.suffix.lower() in LIGHTSHEET_SUFFIXES:
        from ssai3d_dask.io.lightsheet import lightsheet_axes

        try:
            sizes, labels = lightsheet_axes(p)
        except VolumeError:  # open_volume gives the readable error
            return sizes, labels, time_meta
    if "c" in sizes and len(labels) != sizes["c"]:
        labels = [None] * sizes["c"]
    return sizes, labels, time_meta


@dataclass
class Dataset:
    """Selected (t, c) slices of an input, each a lazy 3D :class:`Volume`.

    Attributes
    ----------
    axes : str
        Non-spatial axes kept in the output, in the input's order (``""``, ``"c"``, ``"t"`` or ``"tc"``).
    times, channels : list of int or None
        Selected indices along t and c (None: the input has no such axis).
    volumes : dict
        ``(t, c) -> Volume``; t or c is None where the input has no such axis.
    labels : list of str
        One label per selected channel (the input's omero label, else ``c{index}``).
    """

    source: str
    axes: str
    times: list[int] | None
    channels: list[int] | None
    volumes: dict[tuple[int | None, int | None], Volume]
    labels: list[str] = field(default_factory=list)
    time_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """Output sizes of the kept non-spatial axes, in :attr:`axes` order."""
        return tuple(len(self.times if a == "t" else self.channels) for a in self.axes)  # type: ignore[arg-type]

    def slices(self):
        """(lead index in the output, t, c, Volume) for every slice, t-major."""
        for ti, t in enumerate(self.times if self.times is not None else [None]):
            for ci, c in enumerate(self.channels if self.channels is not None else [None]):
                pos = {"t": ti, "c": ci}
                yield tuple(pos[a] for a in self.axes), t, c, self.volumes[(t, c)]

    @property
    def first(self) -> Volume:
        return next(iter(self.volumes.values()))


def open_dataset(path: str | Path, voxel_size_um: Sequence[float] | None = None, channels=None, times=None,
                 level: int = 0) -> Dataset:
    """Open every selected channel and time point of ``path`` lazily (all of them by default).

    ``channels``/``times``: ``"0,2"``, ``"1-3"``, ``"all"``, an int, a list, or None (all).
    """
    sizes, labels, time_meta = input_axes(path, level)
    sel = {"c": parse_selection(channels, sizes.get("c", 1), "--channel"),
           "t": parse_selection(times, sizes.get("t", 1), "--time")}
    for ax, flag in (("c", "--channel"), ("t", "--time")):
        if ax not in sizes and sel[ax] not in (None, [0]):
            raise VolumeError(f"{path} has no {'channel' if ax == 'c' else 'time'} axis; drop {flag}")
    chosen = {ax: (sel[ax] if sel[ax] is not None else list(range(sizes[ax]))) if ax in sizes else None
              for ax in "tc"}
    kept = "".join(ax for ax in sizes if chosen[ax] is not None and len(chosen[ax]) > 1)
    volumes = {}
    for t in chosen["t"] if chosen["t"] is not None else [None]:
        for c in chosen["c"] if chosen["c"] is not None else [None]:
            volumes[(t, c)] = open_volume(path, voxel_size_um, channel=c, time=t, level=level)
    first = next(iter(volumes.values()))
    for (t, c), v in volumes.items():
        if v.shape != first.shape or v.voxel_size_um != first.voxel_size_um:
            raise VolumeError(f"{path}: slice t={t} c={c} has shape {v.shape}, voxel {v.voxel_size_um}; the first "
                              f"has {first.shape}, {first.voxel_size_um}; all slices must share one grid")
    names = [labels[c] if c is not None and c < len(labels) and labels[c] else f"c{c}"
             for c in (chosen["c"] or [])]
    return Dataset(str(path), kept, chosen["t"], chosen["c"], volumes, names, time_meta)


def dataset_from_volume(vol: Volume) -> Dataset:
    """A one-slice dataset (the 3D case)."""
    return Dataset(vol.source, "", None, None, {(None, None): vol}, [], {})
