"""BigDataViewer (HDF5 + XML) and Imaris (``.ims``) inputs, read lazily with h5py (``ssai3d-dask[hdf5]``).

BigDataViewer (mesoSPIM, BigStitcher): the XML (``SpimData``) names the HDF5 file and each view setup's
size and voxel size; the HDF5 file holds ``t{T:05d}/s{S:02d}/{level}/cells`` (z, y, x; 16-bit data are
stored as int16 and read as uint16, as BigDataViewer does) and ``s{S:02d}/resolutions`` (each pyramid
level's factors, x y z). Setups are channels, timepoints are time points.

Imaris: ``DataSet/ResolutionLevel {l}/TimePoint {t}/Channel {c}/Data`` (z, y, x, padded to whole chunks);
the image size and its physical extent (hence the voxel size) are attributes of ``DataSetInfo/Image``,
channel names those of ``DataSetInfo/Channel {c}``.

Workers read their own crops through :class:`H5Source` (a path and a dataset name, picklable), which opens
the file once per process.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.source import Crop, Source, _cached

#: File suffixes these readers open.
BDV_SUFFIXES = (".xml", ".h5", ".hdf5")
IMS_SUFFIXES = (".ims",)
_UNIT_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
            "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "m": 1e6}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise VolumeError("reading HDF5 (BigDataViewer, Imaris) needs h5py: pip install 'ssai3d-dask[hdf5]'") from None
    return h5py


def _open_file(path: str):
    h5py = _h5py()
    return _cached(("h5", path, os.stat(path).st_mtime_ns), lambda: h5py.File(path, "r"))


@dataclass(frozen=True)
class H5Source(Source):
    """One (z, y, x) dataset of an HDF5 file (its first ``shape`` voxels: Imaris pads to whole chunks)."""

    path: str
    key: str
    shape3: tuple[int, int, int]
    dtype_str: str
    stored_str: str  # the dtype in the file (int16 where BigDataViewer stores uint16)

    @property
    def shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        return self.shape3

    @property
    def dtype(self) -> np.dtype:  # type: ignore[override]
        return np.dtype(self.dtype_str)

    def read(self, crop: Crop) -> np.ndarray:
        block = np.asarray(_open_file(self.path)[self.key][tuple(crop)])
        return block.view(self.dtype) if self.stored_str != self.dtype_str else block

    def storage_unit(self) -> tuple[int, int, int] | None:
        chunks = _open_file(self.path)[self.key].chunks
        return tuple(int(c) for c in chunks) if chunks else None  # type: ignore[return-value]

    def __getitem__(self, index) -> np.ndarray:  # what dask's from_array reads blocks with
        return self.read(tuple(index))

    @property
    def ndim(self) -> int:
        return 3


@dataclass(frozen=True)
class H5Image:
    """What a reader found: the (t, c) entries, each one's dataset at each level, sizes and voxel sizes."""

    path: str  # the HDF5 file
    source: str  # what the user gave (the XML for BigDataViewer)
    times: list[int]
    channels: list[int]
    labels: list[str | None]
    voxel_um: dict[int, tuple[float, float, float]]  # channel -> (dz, dy, dx) at level 0
    levels: dict[int, list[tuple[int, int, int]]]  # channel -> per level, factors (z, y, x)
    key: Any  # (t, c, level) -> dataset name
    shape: Any  # (c, level) -> (z, y, x) of the image (without padding)


def _bdv_xml_for(p: Path) -> Path:
    if p.suffix.lower() == ".xml":
        return p
    xml = p.with_suffix(".xml")
    if not xml.exists():
        raise VolumeError(f"{p} is an HDF5 file without its BigDataViewer XML ({xml.name} not found beside it); "
                          f"give the .xml, or --voxel-size and an .ims or OME-Zarr instead")
    return xml


def _float_list(text: str | None) -> list[float]:
    return [float(v) for v in (text or "").split()]


def read_bdv(p: Path) -> H5Image:
    """Read a BigDataViewer XML and the HDF5 file it names (metadata only)."""
    xml = _bdv_xml_for(p)
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise VolumeError(f"{xml} is not valid XML ({exc}); export the BigDataViewer dataset again") from exc
    seq = root.find("SequenceDescription")
    loader = seq.find("ImageLoader") if seq is not None else None
    if loader is None or not str(loader.get("format", "")).startswith("bdv.hdf5"):
        fmt = None if loader is None else loader.get("format")
        raise VolumeError(f"{xml} is not a BigDataViewer HDF5 dataset (image loader {fmt!r}); ssai3d reads "
                          f"format bdv.hdf5 (for N5, convert with BigStitcher's 'resave as HDF5' or to OME-Zarr)")
    node = loader.find("hdf5")
    h5 = Path(node.text.strip()) if node is not None and node.text else None
    if h5 is None:
        raise VolumeError(f"{xml} names no HDF5 file in its ImageLoader")
    if not h5.is_absolute() or node.get("type") == "relative":
        h5 = xml.parent / h5
    if not h5.exists():
        raise VolumeError(f"{xml} names {h5}, which does not exist; move the .h5 back beside the XML")
    setups, voxel = [], {}
    labels = []
    for vs in seq.iter("ViewSetup"):
        sid = int(vs.findtext("id"))
        setups.append(sid)
        labels.append(vs.findtext("name"))
        size = vs.find("voxelSize")
        if size is not None:
            unit = (size.findtext("unit") or "um").strip().lower()
            if unit not in _UNIT_UM:
                raise VolumeError(f"{xml}: voxel size unit {unit!r} of setup {sid} is not a length ssai3d knows")
            x, y, z = (v * _UNIT_UM[unit] for v in _float_list(size.findtext("size")))
            voxel[sid] = (z, y, x)
    tp = seq.find("Timepoints")
    if tp is None:
        times = [0]
    elif tp.get("type") == "range":
        times = list(range(int(tp.findtext("first")), int(tp.findtext("last")) + 1))
    else:
        times = [int(t) for t in (tp.findtext("integerpattern") or tp.findtext("list") or "0").replace(",", " ").split()]
    f = _open_file(str(h5.resolve()))
    levels = {}
    for s in setups:
        res = f.get(f"s{s:02d}/resolutions")
        levels[s] = ([tuple(int(round(v)) for v in row[::-1]) for row in np.asarray(res)] if res is not None
                     else [(1, 1, 1)])

    def key(t, c, level):
        return f"t{t:05d}/s{c:02d}/{level}/cells"

    def shape(c, level):
        k = key(times[0], c, level)
        if k not in f:
            raise VolumeError(f"{h5} has no dataset {k} (level {level} of setup {c}); the file is incomplete")
        return tuple(int(n) for n in f[k].shape)

    return H5Image(str(h5.resolve()), str(xml), times, setups, labels, voxel, levels, key, shape)


def _ims_attr(node, name: str) -> str | None:
    v = node.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode()
    return b"".join(bytes(x) for x in np.asarray(v).ravel()).decode() if np.asarray(v).dtype.kind == "S" else str(v)


def read_ims(p: Path) -> H5Image:
    """Read an Imaris file's structure and metadata (no voxels)."""
    f = _open_file(str(p.resolve()))
    if "DataSet" not in f or "DataSetInfo/Image" not in f:
        raise VolumeError(f"{p} is not an Imaris file (no DataSet / DataSetInfo/Image groups); export it again")
    info = f["DataSetInfo/Image"]
    try:
        size = tuple(int(_ims_attr(info, a)) for a in ("Z", "Y", "X"))
        ext = [(float(_ims_attr(info, f"ExtMin{i}")), float(_ims_attr(info, f"ExtMax{i}"))) for i in (2, 1, 0)]
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{p}: DataSetInfo/Image lacks the size (X, Y, Z) or extent (ExtMin/ExtMax) attributes "
                          f"({exc}); give --voxel-size or export the file again") from exc
    unit = (_ims_attr(info, "Unit") or "um").strip().lower()
    scale = _UNIT_UM.get(unit, 1.0)
    voxel = tuple(abs(b - a) * scale / n for (a, b), n in zip(ext, size))
    level0 = f["DataSet/ResolutionLevel 0"]
    times = sorted(int(k.split()[-1]) for k in level0 if k.startswith("TimePoint "))
    channels = sorted(int(k.split()[-1]) for k in level0[f"TimePoint {times[0]}"] if k.startswith("Channel "))
    labels = [(_ims_attr(f[f"DataSetInfo/Channel {c}"], "Name") if f"DataSetInfo/Channel {c}" in f else None)
              for c in channels]
    n_levels = len([k for k in f["DataSet"] if k.startswith("ResolutionLevel ")])

    def key(t, c, level):
        return f"DataSet/ResolutionLevel {level}/TimePoint {t}/Channel {c}/Data"

    def factors(level):  # each level halves the axes Imaris chose; read them from the stored sizes
        stored = f[key(times[0], channels[0], level)].shape
        return tuple(max(1, int(round(n / max(1, min(s, n))))) for n, s in zip(size, stored))

    levels = {c: [factors(lv) for lv in range(n_levels)] for c in channels}

    def shape(c, level):
        k = key(times[0], c, level)
        if k not in f:
            raise VolumeError(f"{p} has no dataset {k}; the file is incomplete")
        stored = f[k].shape
        return tuple(min(-(-n // fa), s) for n, fa, s in zip(size, levels[c][level], stored))

    return H5Image(str(p.resolve()), str(p), times, channels, labels, dict.fromkeys(channels, voxel), levels, key,
                   shape)


def read_image(p: Path) -> H5Image:
    return read_ims(p) if p.suffix.lower() in IMS_SUFFIXES else read_bdv(p)


def _pick(what: str, flag: str, entries: list[int], want: int | None, source: str) -> int:
    if want is None:
        if len(entries) == 1:
            return entries[0]
        raise VolumeError(f"{source} has {len(entries)} {what}s; choose one with {flag} N (0..{len(entries) - 1})")
    if not 0 <= want < len(entries):
        raise VolumeError(f"{flag} {want} out of range for {source}: choose 0..{len(entries) - 1}")
    return entries[want]


def open_hdf5(p: Path, voxel_override, channel: int | None, time: int | None, level: int):
    """A :class:`~ssai3d_dask.io.volume.Volume` of one (t, c) of a BigDataViewer or Imaris file."""
    from ssai3d_dask.io.volume import Volume, validate_voxel_size

    img = read_image(p)
    c = _pick("channel", "--channel", img.channels, channel, img.source)
    t = _pick("time point", "--time", img.times, time, img.source)
    if not 0 <= level < len(img.levels[c]):
        raise VolumeError(f"--level {level} out of range for {img.source}: it has levels 0..{len(img.levels[c]) - 1}")
    key = img.key(t, c, level)
    f = _open_file(img.path)
    if key not in f:
        raise VolumeError(f"{img.path} has no dataset {key}; the file is incomplete")
    stored = np.dtype(f[key].dtype)
    dtype = np.dtype(np.uint16) if stored == np.int16 and p.suffix.lower() != ".ims" else stored
    shape = img.shape(c, level)
    src = H5Source(img.path, key, shape, dtype.str, stored.str)
    chunks = src.storage_unit() or (min(shape[0], 64), *shape[1:])
    data = da.from_array(src, chunks=tuple(min(a, b) for a, b in zip(chunks, shape)), meta=np.empty((0, 0, 0), dtype),
                         name=f"h5-{img.path}-{key}-{os.stat(img.path).st_mtime_ns}")
    if voxel_override is not None:
        voxel = validate_voxel_size(voxel_override, img.source)
    elif c in img.voxel_um:
        voxel = tuple(v * fa for v, fa in zip(img.voxel_um[c], img.levels[c][level]))
    else:
        voxel = validate_voxel_size(None, img.source)
    selection = {"channel": img.channels.index(c)} if len(img.channels) > 1 else {}
    if len(img.times) > 1:
        selection["time"] = img.times.index(t)
    if level:
        selection["level"] = level
    return Volume(data, voxel, img.source, selection, src)


def hdf5_axes(p: Path) -> tuple[dict[str, int], list[str | None]]:
    """Sizes of the time and channel axes (``{"t": 3, "c": 2}``) and the channel labels."""
    img = read_image(p)
    return {"t": len(img.times), "c": len(img.channels)}, list(img.labels)


def is_hdf5_input(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in BDV_SUFFIXES + IMS_SUFFIXES


