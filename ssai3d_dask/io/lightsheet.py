"""The light-sheet formats: BigDataViewer (XML with HDF5 or N5) and Imaris (``.ims``), read lazily
(h5py for HDF5, ``ssai3d-dask[hdf5]``; tensorstore for N5, ``ssai3d-dask[n5]``).

BigDataViewer (mesoSPIM, BigStitcher): the XML (``SpimData``) names the container and each view setup's
size and voxel size. An HDF5 container holds ``t{T:05d}/s{S:02d}/{level}/cells`` (z, y, x; 16-bit data are
stored as int16 and read as uint16, as BigDataViewer does) and ``s{S:02d}/resolutions`` (each pyramid
level's factors, x y z); an N5 container (BigStitcher) ``setup{S}/timepoint{T}/s{level}`` with the factors
in ``setup{S}``'s ``downsamplingFactors``. Setups are channels, timepoints are time points.

Imaris: ``DataSet/ResolutionLevel {l}/TimePoint {t}/Channel {c}/Data`` (z, y, x, padded to whole chunks);
the image size and its physical extent (hence the voxel size) are attributes of ``DataSetInfo/Image``,
channel names those of ``DataSetInfo/Channel {c}``.

Workers read their own crops through :class:`H5Source` or :class:`N5Source` (a path and a dataset name,
picklable), which open the container once per process.
"""

from __future__ import annotations

import importlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.source import Crop, FileSource, _cached

#: File suffixes these readers open.
BDV_SUFFIXES = (".xml", ".h5", ".hdf5")
IMS_SUFFIXES = (".ims",)
_UNIT_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
            "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "m": 1e6}


def _optional(module: str, what: str, extra: str):
    """Import an optional reader library, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VolumeError(f"reading {what} needs {module}: pip install 'ssai3d-dask[{extra}]'") from None


def _open_file(path: str):
    h5py = _optional("h5py", "HDF5 (BigDataViewer, Imaris)", "hdf5")
    return _cached(("h5", path, os.stat(path).st_mtime_ns), lambda: h5py.File(path, "r"))


class _ContainerSource(FileSource):
    """A (z, y, x) dataset of a container file, also readable by ``dask.array.from_array`` (``[...]``)."""

    shape3: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        return self.shape3

    @property
    def ndim(self) -> int:
        return 3

    def __getitem__(self, index) -> np.ndarray:  # what dask's from_array reads blocks with
        return self.read(tuple(index))


@dataclass(frozen=True)
class H5Source(_ContainerSource):
    """One (z, y, x) dataset of an HDF5 file (its first ``shape`` voxels: Imaris pads to whole chunks)."""

    path: str
    key: str
    shape3: tuple[int, int, int]
    dtype_str: str
    stored_str: str  # the dtype in the file (int16 where BigDataViewer stores uint16)

    def read(self, crop: Crop) -> np.ndarray:
        block = np.asarray(_open_file(self.path)[self.key][tuple(crop)])
        return block.view(self.dtype) if self.stored_str != self.dtype_str else block

    def storage_unit(self) -> tuple[int, int, int] | None:
        chunks = _open_file(self.path)[self.key].chunks
        return tuple(int(c) for c in chunks) if chunks else None  # type: ignore[return-value]


def _open_n5(path: str):
    ts = _optional("tensorstore", "N5 (BigStitcher)", "n5")
    stamp = os.stat(Path(path) / "attributes.json").st_mtime_ns
    return _cached(("n5", path, stamp), lambda: ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": path}},
                                                         read=True).result())


@dataclass(frozen=True)
class N5Source(_ContainerSource):
    """One N5 dataset (a folder; stored x, y, z as N5 does), read as (z, y, x) through tensorstore."""

    path: str
    shape3: tuple[int, int, int]
    dtype_str: str

    def read(self, crop: Crop) -> np.ndarray:
        z, y, x = crop
        return np.asarray(_open_n5(self.path)[x, y, z].read().result()).transpose(2, 1, 0)

    def storage_unit(self) -> tuple[int, int, int] | None:
        block = json.loads((Path(self.path) / "attributes.json").read_text()).get("blockSize")
        return tuple(int(b) for b in block[::-1]) if block else None  # type: ignore[return-value]


@dataclass(frozen=True)
class LightsheetImage:
    """What a reader found: the (t, c) entries, each one's dataset at each level, sizes and voxel sizes."""

    path: str  # the HDF5 file or the N5 folder
    source: str  # what the user gave (the XML for BigDataViewer)
    times: list[int]
    channels: list[int]
    labels: list[str | None]
    voxel_um: dict[int, tuple[float, float, float]]  # channel -> (dz, dy, dx) at level 0
    levels: dict[int, list[tuple[int, int, int]]]  # channel -> per level, factors (z, y, x)
    key: Any  # (t, c, level) -> dataset name
    shape: Any  # (c, level) -> (z, y, x) of the image (without padding)
    n5: bool = False


def _dataset(f, path, key: str):
    """The dataset ``key`` of the open file ``f`` (at ``path``), or an error saying the file is incomplete."""
    if key not in f:
        raise VolumeError(f"{path} has no dataset {key}; the file is incomplete (export it again)")
    return f[key]


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


def read_bdv(p: Path) -> LightsheetImage:
    """Read a BigDataViewer XML and the HDF5 file it names (metadata only)."""
    xml = _bdv_xml_for(p)
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise VolumeError(f"{xml} is not valid XML ({exc}); export the BigDataViewer dataset again") from exc
    seq = root.find("SequenceDescription")
    loader = seq.find("ImageLoader") if seq is not None else None
    fmt = None if loader is None else str(loader.get("format", ""))
    if fmt not in ("bdv.hdf5", "bdv.n5"):
        raise VolumeError(f"{xml} is not a BigDataViewer dataset ssai3d reads (image loader {fmt!r}); ssai3d reads "
                          f"formats bdv.hdf5 and bdv.n5 (resave others as HDF5 in BigStitcher, or convert to OME-Zarr)")
    n5 = fmt == "bdv.n5"
    node = loader.find("n5" if n5 else "hdf5")
    h5 = Path(node.text.strip()) if node is not None and node.text else None
    if h5 is None:
        raise VolumeError(f"{xml} names no {'N5 folder' if n5 else 'HDF5 file'} in its ImageLoader")
    if not h5.is_absolute() or node.get("type") == "relative":
        h5 = xml.parent / h5
    if not h5.exists():
        raise VolumeError(f"{xml} names {h5}, which does not exist; move the {'.n5' if n5 else '.h5'} back "
                          f"beside the XML")
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
    if n5:
        return _bdv_n5(h5.resolve(), xml, times, setups, labels, voxel)
    f = _open_file(str(h5.resolve()))
    levels = {}
    for s in setups:
        res = f.get(f"s{s:02d}/resolutions")
        levels[s] = ([tuple(int(round(v)) for v in row[::-1]) for row in np.asarray(res)] if res is not None
                     else [(1, 1, 1)])

    def key(t, c, level):
        return f"t{t:05d}/s{c:02d}/{level}/cells"

    def shape(c, level):
        return tuple(int(n) for n in _dataset(f, h5, key(times[0], c, level)).shape)

    return LightsheetImage(str(h5.resolve()), str(xml), times, setups, labels, voxel, levels, key, shape)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VolumeError(f"{path} cannot be read as JSON ({exc}); the N5 container is damaged") from exc


def _bdv_n5(root: Path, xml: Path, times, setups, labels, voxel) -> LightsheetImage:
    """A BigDataViewer dataset in an N5 container (BigStitcher's layout)."""
    levels = {s: [tuple(int(round(v)) for v in row[::-1])
                  for row in _json(root / f"setup{s}" / "attributes.json").get("downsamplingFactors", [[1, 1, 1]])]
              for s in setups}

    def key(t, c, level):
        return f"setup{c}/timepoint{t}/s{level}"

    def shape(c, level):
        meta = root / key(times[0], c, level) / "attributes.json"
        if not meta.exists():
            raise VolumeError(f"{root} has no dataset {key(times[0], c, level)}; the container is incomplete")
        return tuple(int(n) for n in _json(meta)["dimensions"][::-1])

    return LightsheetImage(str(root), str(xml), times, setups, labels, voxel, levels, key, shape, n5=True)


def _ims_attr(node, name: str) -> str | None:
    v = node.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode()
    return b"".join(bytes(x) for x in np.asarray(v).ravel()).decode() if np.asarray(v).dtype.kind == "S" else str(v)


def read_ims(p: Path) -> LightsheetImage:
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

    def shape(c, level):  # the image without the padding to whole chunks
        stored = _dataset(f, p, key(times[0], c, level)).shape
        return tuple(min(-(-n // fa), s) for n, fa, s in zip(size, levels[c][level], stored))

    return LightsheetImage(str(p.resolve()), str(p), times, channels, labels, dict.fromkeys(channels, voxel), levels, key,
                   shape)


def read_image(p: Path) -> LightsheetImage:
    return read_ims(p) if p.suffix.lower() in IMS_SUFFIXES else read_bdv(p)


def _pick(what: str, flag: str, entries: list[int], want: int | None, source: str) -> int:
    if want is None:
        if len(entries) == 1:
            return entries[0]
        raise VolumeError(f"{source} has {len(entries)} {what}s; choose one with {flag} N (0..{len(entries) - 1})")
    if not 0 <= want < len(entries):
        raise VolumeError(f"{flag} {want} out of range for {source}: choose 0..{len(entries) - 1}")
    return entries[want]


def open_lightsheet(p: Path, voxel_override, channel: int | None, time: int | None, level: int):
    """A :class:`~ssai3d_dask.io.volume.Volume` of one (t, c) of a BigDataViewer or Imaris file."""
    from ssai3d_dask.io.volume import Volume, validate_voxel_size

    img = read_image(p)
    c = _pick("channel", "--channel", img.channels, channel, img.source)
    t = _pick("time point", "--time", img.times, time, img.source)
    if not 0 <= level < len(img.levels[c]):
        raise VolumeError(f"--level {level} out of range for {img.source}: it has levels 0..{len(img.levels[c]) - 1}")
    key = img.key(t, c, level)
    shape = img.shape(c, level)
    if img.n5:
        dtype = np.dtype(_json(Path(img.path) / key / "attributes.json")["dataType"])
        src = N5Source(str(Path(img.path) / key), shape, dtype.str)
    else:
        stored = np.dtype(_dataset(_open_file(img.path), img.path, key).dtype)
        dtype = np.dtype(np.uint16) if stored == np.int16 and p.suffix.lower() != ".ims" else stored
        src = H5Source(img.path, key, shape, dtype.str, stored.str)
    chunks = src.storage_unit() or (min(shape[0], 64), *shape[1:])
    data = da.from_array(src, chunks=tuple(min(a, b) for a, b in zip(chunks, shape)), meta=np.empty((0, 0, 0), dtype),
                         name=f"{type(src).__name__}-{img.path}-{key}-{os.stat(img.path).st_mtime_ns}")
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


def lightsheet_axes(p: Path) -> tuple[dict[str, int], list[str | None]]:
    """Sizes of the time and channel axes (``{"t": 3, "c": 2}``) and the channel labels."""
    img = read_image(p)
    return {"t": len(img.times), "c": len(img.channels)}, list(img.labels)
