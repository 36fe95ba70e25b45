"""BigDataViewer (XML with HDF5 or N5) and Imaris inputs: channels, time points, voxel size and pyramid read from the
files; a restore from them equals one from the same voxels in OME-Zarr; bad files get one-line errors."""

import numpy as np
import pytest

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.dataset import open_dataset
from ssai3d_dask.io.volume import Volume, open_volume
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings

h5py = pytest.importorskip("h5py")

RNG = np.random.default_rng(7)
#: (t, c, z, y, x) voxels of a 2-time-point, 2-channel stack
DATA = RNG.integers(0, 60000, (2, 2, 12, 40, 36)).astype(np.uint16)


def write_bdv(folder, data=DATA, voxel=(2.0, 0.5, 0.5), unit="µm"):
    """A BigDataViewer dataset as BigStitcher writes it: int16 cells, a 2-level pyramid, relative HDF5 path."""
    folder.mkdir(parents=True, exist_ok=True)
    nt, nc = data.shape[:2]
    with h5py.File(folder / "d.h5", "w") as f:
        for c in range(nc):
            f[f"s{c:02d}/resolutions"] = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 1.0]])  # x y z
            f[f"s{c:02d}/subdivisions"] = np.array([[16, 16, 4], [16, 16, 4]], np.int32)
            for t in range(nt):
                v = data[t, c]
                f.create_dataset(f"t{t:05d}/s{c:02d}/0/cells", data=v.view(np.int16), chunks=(4, 16, 16))
                f.create_dataset(f"t{t:05d}/s{c:02d}/1/cells", data=v[:, ::2, ::2].view(np.int16), chunks=(4, 16, 16))
    setups = "".join(f"<ViewSetup><id>{c}</id><name>ch{c}</name><size>{data.shape[4]} {data.shape[3]} "
                     f"{data.shape[2]}</size><voxelSize><unit>{unit}</unit><size>{voxel[2]} {voxel[1]} {voxel[0]}"
                     f"</size></voxelSize><attributes><channel>{c}</channel></attributes></ViewSetup>"
                     for c in range(nc))
    (folder / "d.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2"><BasePath type="relative">.</BasePath>'
        f'<SequenceDescription><ImageLoader format="bdv.hdf5"><hdf5 type="relative">d.h5</hdf5></ImageLoader>'
        f'<ViewSetups>{setups}</ViewSetups><Timepoints type="range"><first>0</first><last>{nt - 1}</last>'
        f'</Timepoints></SequenceDescription></SpimData>', encoding="utf-8")
    return folder / "d.xml"


def write_n5_block(path, block):
    """One raw N5 block as the N5 specification stores it: mode 0, rank, the block's size (x y z) as big-endian
    integers, then the voxels big-endian with x varying fastest (written here without tensorstore)."""
    import struct

    z, y, x = block.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">HH3I", 0, 3, x, y, z) + block.astype(">u2").tobytes())


def write_bdv_n5(folder, data=DATA, voxel=(2.0, 0.5, 0.5), block=(4, 8, 4)):
    """A BigDataViewer dataset in an N5 container, laid out as BigStitcher writes it (2 levels)."""
    import json

    xml = write_bdv(folder, data, voxel)
    text = xml.read_text().replace('<ImageLoader format="bdv.hdf5"><hdf5 type="relative">d.h5</hdf5>',
                                   '<ImageLoader format="bdv.n5" version="1.0"><n5 type="relative">d.n5</n5>')
    xml.write_text(text, encoding="utf-8")
    root = folder / "d.n5"
    root.mkdir()
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.0"}))
    bz, by, bx = block
    for c in range(data.shape[1]):
        (root / f"setup{c}").mkdir()
        (root / f"setup{c}" / "attributes.json").write_text(
            json.dumps({"downsamplingFactors": [[1, 1, 1], [2, 2, 1]], "dataType": "uint16"}))
        for t in range(data.shape[0]):
            for level, step in ((0, 1), (1, 2)):
                v = data[t, c, :, ::step, ::step]
                ds = root / f"setup{c}" / f"timepoint{t}" / f"s{level}"
                ds.mkdir(parents=True)
                (ds / "attributes.json").write_text(json.dumps(
                    {"dimensions": list(v.shape[::-1]), "blockSize": [bx, by, bz], "dataType": "uint16",
                     "compression": {"type": "raw"}}))
                for k in range(0, v.shape[0], bz):
                    for j in range(0, v.shape[1], by):
                        for i in range(0, v.shape[2], bx):
                            write_n5_block(ds / str(i // bx) / str(j // by) / str(k // bz),
                                           v[k:k + bz, j:j + by, i:i + bx])
    return xml


def _chars(text):
    return np.array(list(str(text)), dtype="S1")


def write_ims(path, data=DATA, voxel=(2.0, 0.5, 0.5)):
    """An Imaris file: data padded to whole chunks, size and extent as character attributes."""
    nt, nc, z, y, x = data.shape
    with h5py.File(path, "w") as f:
        info = f.create_group("DataSetInfo/Image")
        for k, v in {"X": x, "Y": y, "Z": z, "Unit": "um", "ExtMin0": 0, "ExtMin1": 0, "ExtMin2": 0,
                     "ExtMax0": x * voxel[2], "ExtMax1": y * voxel[1], "ExtMax2": z * voxel[0]}.items():
            info.attrs[k] = _chars(v)
        for c in range(nc):
            f.create_group(f"DataSetInfo/Channel {c}").attrs["Name"] = _chars(f"dye{c}")
            for t in range(nt):
                for level, step in ((0, 1), (1, 2)):
                    v = data[t, c, :, ::step, ::step]
                    padded = np.zeros([-(-n // 8) * 8 for n in v.shape], v.dtype)
                    padded[:v.shape[0], :v.shape[1], :v.shape[2]] = v
                    f.create_dataset(f"DataSet/ResolutionLevel {level}/TimePoint {t}/Channel {c}/Data",
                                     data=padded, chunks=(8, 8, 8))
    return path


@pytest.mark.parametrize("kind", ["bdv", "ims", "n5"])
def test_channels_times_voxel_size_and_pyramid_come_from_the_file(tmp_path, kind):
    if kind == "n5":
        pytest.importorskip("tensorstore")
    path = {"bdv": lambda: write_bdv(tmp_path / "b"), "ims": lambda: write_ims(tmp_path / "i.ims"),
            "n5": lambda: write_bdv_n5(tmp_path / "n")}[kind]()
    vol = open_volume(path, channel=1, time=1)
    assert vol.shape == (12, 40, 36) and vol.dtype == np.uint16
    assert vol.voxel_size_um == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(vol.data.compute(), DATA[1, 1])
    np.testing.assert_array_equal(vol.source_handle().read((slice(3, 9), slice(5, 30), slice(0, 36))),
                                  DATA[1, 1, 3:9, 5:30, :])
    coarse = open_volume(path, channel=0, time=0, level=1)
    assert coarse.shape == (12, 20, 18) and coarse.voxel_size_um == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(coarse.data.compute(), DATA[0, 0, :, ::2, ::2])
    ds = open_dataset(path)
    assert ds.axes == "tc" and ds.lead_shape == (2, 2)
    assert ds.labels == (["dye0", "dye1"] if kind == "ims" else ["ch0", "ch1"])
    with pytest.raises(VolumeError, match="choose one with --channel"):
        open_volume(path, time=0)
    from ssai3d_dask.io.describe import describe

    info = describe(path)
    assert info["levels"] == [[12, 40, 36], [12, 20, 18]] and info["channels"].startswith("2")


def test_a_restore_from_bigdataviewer_equals_one_from_the_same_voxels(tmp_path):
    xml = write_bdv(tmp_path / "b")
    s = RestoreSettings(method="interp", chunks=(16, 16, 16), region=(32, 32, 32))
    restore(open_dataset(xml, channels="1", times="0"), None, tmp_path / "from_bdv.ome.zarr", s, progress=False)
    restore(Volume.from_array(DATA[0, 1], (2.0, 0.5, 0.5)), None, tmp_path / "from_mem.ome.zarr", s, progress=False)
    np.testing.assert_array_equal(open_volume(tmp_path / "from_bdv.ome.zarr").data.compute(),
                                  open_volume(tmp_path / "from_mem.ome.zarr").data.compute())


def test_bad_hdf5_inputs_say_what_is_wrong(tmp_path):
    xml = write_bdv(tmp_path / "b")
    (tmp_path / "b" / "d.h5").rename(tmp_path / "b" / "moved.h5")
    with pytest.raises(VolumeError, match="does not exist; move the .h5 back"):
        open_volume(xml, channel=0, time=0)
    (tmp_path / "lone.h5").write_bytes(b"")
    with pytest.raises(VolumeError, match="without its BigDataViewer XML"):
        open_volume(tmp_path / "lone.h5")
    (tmp_path / "zarr.xml").write_text('<SpimData><SequenceDescription><ImageLoader format="bdv.multimg.zarr"/>'
                                       '</SequenceDescription></SpimData>')
    with pytest.raises(VolumeError, match="formats bdv.hdf5 and bdv.n5"):
        open_volume(tmp_path / "zarr.xml")
    with h5py.File(tmp_path / "x.ims", "w") as f:
        f["a"] = 1
    with pytest.raises(VolumeError, match="not an Imaris file"):
        open_volume(tmp_path / "x.ims")
