"""Lazy readers: formats, voxel sizes, selections, errors, and that opening reads no chunks."""

import math
import time

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.codecs import DEFAULT
from ssai3d_dask.io.omezarr import MultiscaleWriter, write_multiscale
from ssai3d_dask.io.volume import Volume, open_volume


@pytest.fixture
def stack(rng):
    return (rng.random((19, 37, 23)) * 4000).astype(np.uint16)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_omezarr_round_trip(tmp_path, stack, ngff):
    write_multiscale(stack, tmp_path / "a.ome.zarr", (2.5, 0.5, 0.5), chunks=(8, 16, 16), ngff_version=ngff)
    vol = open_volume(tmp_path / "a.ome.zarr")
    assert vol.shape == stack.shape and vol.dtype == np.uint16
    assert vol.voxel_size_um == (2.5, 0.5, 0.5)
    assert vol.anisotropy == 5.0
    np.testing.assert_array_equal(vol.data.compute(), stack)
    lvl1 = open_volume(tmp_path / "a.ome.zarr", level=1)
    assert lvl1.voxel_size_um == (2.5, 1.0, 1.0)
    assert lvl1.shape == (19, 18, 11)


def test_numpy_and_dask_inputs_write_the_same(tmp_path, stack):
    write_multiscale(stack, tmp_path / "n.ome.zarr", (1, 1, 1), chunks=(8, 16, 16))
    write_multiscale(da.from_array(stack, chunks=(5, 11, 7)), tmp_path / "d.ome.zarr", (1, 1, 1), chunks=(8, 16, 16))
    a = open_volume(tmp_path / "n.ome.zarr").data.compute()
    b = open_volume(tmp_path / "d.ome.zarr").data.compute()
    np.testing.assert_array_equal(a, b)


def test_opening_a_2tb_store_reads_no_chunks(tmp_path, monkeypatch):
    shape = (2000, 20000, 25000)  # uint16: 2 TB
    MultiscaleWriter(tmp_path / "big.ome.zarr", shape, np.uint16, (3.0, 1.63, 1.63), (64, 256, 256)).write_metadata(
        window={"start": 0, "end": 1000, "min": 0, "max": 65535})
    reads = []
    orig = zarr.storage.LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"):
            reads.append(key)
        return await orig(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    # reads are counted at zarr-python's store: zarrs' codec pipeline (used when installed) reads files itself
    with zarr.config.set({"codec_pipeline.path": DEFAULT}):
        t0 = time.perf_counter()
        vol = open_volume(tmp_path / "big.ome.zarr")
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.0
        assert vol.nbytes > 1.9e12
        assert reads == []
        block = vol.data[70:100, 1030:1300, 5000:5010].compute()  # touches 1 x 2 x 1 chunks
    assert block.shape == (30, 270, 10)
    assert len(reads) == 2


def test_tiff_imagej_voxel_and_lazy(tmp_path, stack):
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, stack, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    vol = open_volume(p)
    assert vol.voxel_size_um == (2.0, 0.4, 0.4)
    assert vol.data.chunks[0] == (1,) * 19  # one page per chunk: never the whole file at once
    np.testing.assert_array_equal(vol.data.compute(), stack)


def test_tiff_ome_voxel(tmp_path, stack):
    p = tmp_path / "s.ome.tif"
    tifffile.imwrite(p, stack, metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
                                         "PhysicalSizeZ": 1000.0, "PhysicalSizeZUnit": "nm"})
    vol = open_volume(p)
    assert vol.voxel_size_um == pytest.approx((1.0, 0.2, 0.2))


def test_bigtiff(tmp_path, stack):
    p = tmp_path / "b.tif"
    tifffile.imwrite(p, stack, bigtiff=True)
    vol = open_volume(p, voxel_size_um=(3, 1, 1))
    np.testing.assert_array_equal(vol.data.compute(), stack)


def test_tiff_folder(tmp_path, stack):
    d = tmp_path / "planes"
    d.mkdir()
    for i, plane in enumerate(stack):
        tifffile.imwrite(d / f"plane_{i}.tif", plane)  # natural sort: plane_10 after plane_9
    vol = open_volume(d, voxel_size_um=(2, 1, 1))
    np.testing.assert_array_equal(vol.data.compute(), stack)


def test_plain_zarr_needs_voxel_size(tmp_path, stack):
    zarr.save_array(str(tmp_path / "p.zarr"), stack)
    with pytest.raises(VolumeError, match="--voxel-size"):
        open_volume(tmp_path / "p.zarr")
    vol = open_volume(tmp_path / "p.zarr", voxel_size_um=(2, 1, 1))
    np.testing.assert_array_equal(vol.data.compute(), stack)


def test_zarr_v2_plain_array(tmp_path, stack):
    z = zarr.create_array(str(tmp_path / "v2.zarr"), shape=stack.shape, dtype=stack.dtype, chunks=(4, 8, 8),
                          zarr_format=2)
    z[...] = stack
    np.testing.assert_array_equal(open_volume(tmp_path / "v2.zarr", voxel_size_um=(1, 1, 1)).data.compute(), stack)


def _write_5d(path, shape=(3, 2, 6, 8, 8)):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    data = np.arange(math.prod(shape), dtype=np.uint16).reshape(shape)
    g.create_array("0", data=data, chunks=(1, 1, 6, 8, 8))
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    write_multiscales_metadata(g, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1, 1, 2.0, 0.5, 0.5]}]}], fmt=FormatV05(), axes=axes)
    return data


def test_5d_selection_and_error(tmp_path):
    data = _write_5d(tmp_path / "t.ome.zarr")
    with pytest.raises(VolumeError, match=r"axis 't'.*--time N \(0\.\.2\)"):
        open_volume(tmp_path / "t.ome.zarr")
    with pytest.raises(VolumeError, match=r"--channel N \(0\.\.1\)"):
        open_volume(tmp_path / "t.ome.zarr", time=1)
    vol = open_volume(tmp_path / "t.ome.zarr", time=2, channel=1)
    assert vol.voxel_size_um == (2.0, 0.5, 0.5)
    assert vol.selection == {"time": 2, "channel": 1, "level": 0}
    np.testing.assert_array_equal(vol.data.compute(), data[2, 1])
    with pytest.raises(VolumeError, match="out of range"):
        open_volume(tmp_path / "t.ome.zarr", time=5, channel=0)


def test_missing_path(tmp_path):
    with pytest.raises(VolumeError, match="not found"):
        open_volume(tmp_path / "nope.tif")


def test_unsupported_format(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(VolumeError, match="unsupported input"):
        open_volume(tmp_path / "a.txt")


def test_2d_data_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((32, 32), np.uint16))
    with pytest.raises(VolumeError, match="not a 3D volume"):
        open_volume(tmp_path / "flat.tif", voxel_size_um=(1, 1, 1))


def test_few_planes_stored_as_rgb_get_a_fix(tmp_path):
    # tifffile's imwrite stores a (3 or 4, y, x) array as RGB(A) with separate planes (axes 'SYX'): no option
    # selects a sample, so the error names how to save the planes as a grey stack instead
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(tmp_path / "four.tif", np.zeros((4, 32, 32), np.uint16))
    with tifffile.TiffFile(tmp_path / "four.tif") as tif:
        axes = tif.series[0].axes
    if axes != "SYX":
        pytest.skip("this tifffile stores (4, y, x) as grey pages")
    with pytest.raises(VolumeError, match="photometric='minisblack'") as err:
        open_volume(tmp_path / "four.tif", voxel_size_um=(1, 1, 1))
    assert "axis 's' N" not in str(err.value)


@pytest.mark.parametrize("bad,msg", [((0, 1, 1), "positive"), ((-1, 1, 1), "positive"),
                                     ((float("nan"), 1, 1), "NaN or Inf"), ((1, float("inf"), 1), "NaN or Inf"),
                                     ((1, 1), "3 values")])
def test_bad_voxel_sizes(bad, msg):
    with pytest.raises(VolumeError, match=msg):
        Volume.from_array(np.zeros((4, 4, 4)), bad)


def test_output_exists_refused(tmp_path, stack):
    write_multiscale(stack, tmp_path / "o.ome.zarr", (1, 1, 1))
    with pytest.raises(VolumeError, match="--overwrite"):
        write_multiscale(stack, tmp_path / "o.ome.zarr", (1, 1, 1))
    write_multiscale(stack[::-1].copy(), tmp_path / "o.ome.zarr", (1, 1, 1), overwrite=True)
    np.testing.assert_array_equal(open_volume(tmp_path / "o.ome.zarr").data.compute(), stack[::-1])


def test_real_stack_voxel_size(shared_data):
    vol = open_volume(shared_data / "cellfinder_stp_cortex" / "signal_ch0.tif")
    assert vol.shape == (30, 510, 667)
    assert vol.voxel_size_um == pytest.approx((5.0, 2.0, 2.0))
    beads = open_volume(shared_data / "confocal_beads_mpicbg" / "Bead_Image1_crop.tif")
    assert beads.voxel_size_um[0] == pytest.approx(0.125)
    assert beads.voxel_size_um[2] == pytest.approx(0.0225, rel=0.01)
