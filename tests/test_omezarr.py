"""Multiscale writer: pyramid, NGFF metadata (golden copy), ome-zarr reader, regions, completion records."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.omezarr import MultiscaleWriter, write_multiscale
from ssai3d_dask.io.pyramid import pyramid_factors

GOLDEN = Path(__file__).parent / "golden" / "multiscales_v05.json"


def _golden_image():
    z, y, x = np.mgrid[0:24, 0:40, 0:48]
    return ((z * 7 + y * 3 + x) % 251).astype(np.uint16)


def test_metadata_matches_golden(tmp_path):
    write_multiscale(_golden_image(), tmp_path / "g.ome.zarr", (2.0, 0.5, 0.5), chunks=(8, 16, 16), name="golden")
    ome = json.loads((tmp_path / "g.ome.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome == json.loads(GOLDEN.read_text())


def test_ome_zarr_reader_reads_what_we_write(tmp_path):
    img = _golden_image()
    write_multiscale(img, tmp_path / "r.ome.zarr", (2.0, 0.5, 0.5), chunks=(8, 16, 16))
    node = list(Reader(parse_url(str(tmp_path / "r.ome.zarr")))())[0]
    pyramid = node.data
    assert len(pyramid) == 4
    np.testing.assert_array_equal(np.asarray(pyramid[0]), img)
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"]
    assert all(a["unit"] == "micrometer" for a in axes)
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales[0] == [2.0, 0.5, 0.5] and scales[1] == [2.0, 1.0, 1.0]


def test_pyramid_levels_are_block_means(tmp_path):
    img = _golden_image()
    w = write_multiscale(img, tmp_path / "p.ome.zarr", (1.0, 1.0, 1.0), chunks=(8, 16, 16))
    lvl1 = w.group["1"][...]
    expect = np.round(img.reshape(12, 2, 20, 2, 24, 2).astype(np.float64).mean(axis=(1, 3, 5))).astype(np.uint16)
    np.testing.assert_array_equal(lvl1, expect)
    assert w.factors[0] == (2, 2, 2)


def test_pyramid_factors_make_anisotropic_data_isotropic_first():
    f = pyramid_factors((100, 4000, 4000), (4.0, 1.0, 1.0), (64, 256, 256))
    assert f[0] == (1, 2, 2) and f[1] == (1, 2, 2) and f[2] == (2, 2, 2)
    # stops once no axis spans more than one chunk
    shape = np.array([100, 4000, 4000])
    for fac in f:
        shape = shape // np.array(fac)
    assert np.all(shape <= np.array([64, 256, 256]) * 2)


def test_omero_window_from_percentiles(tmp_path, rng):
    img = rng.integers(100, 200, (16, 32, 32)).astype(np.uint16)
    img[0, 0, 0] = 60000  # one hot pixel must not set the window
    write_multiscale(img, tmp_path / "w.ome.zarr", (1, 1, 1), chunks=(16, 32, 32))
    ome = json.loads((tmp_path / "w.ome.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    win = ome["omero"]["channels"][0]["window"]
    assert 99 <= win["start"] <= 101 and 198 <= win["end"] <= 200
    assert win["max"] == 65535


def _chunk_grid(shape, region_shape):
    counts = [-(-s // r) for s, r in zip(shape, region_shape)]
    return [tuple(slice(i * r, min((i + 1) * r, s)) for i, r, s in zip(idx, region_shape, shape))
            for idx in np.ndindex(*counts)]


def test_region_writes_must_be_chunk_aligned_and_are_recorded(tmp_path):
    w = MultiscaleWriter(tmp_path / "x.ome.zarr", (20, 30, 40), np.float32, (1, 1, 1), (8, 16, 16))
    regions = _chunk_grid(w.shape, (8, 16, 32))
    assert len(regions) == 3 * 2 * 2
    for i, reg in enumerate(regions):
        w.check_region(reg)
        w.level0[reg] = np.full([s.stop - s.start for s in reg], i, np.float32)
        w.mark_done(f"b{i}", {})
    assert w.done_blocks() == {f"b{i}" for i in range(len(regions))}
    with pytest.raises(VolumeError, match="chunk-aligned"):
        w.check_region((slice(4, 8), slice(0, 16), slice(0, 16)))
    for i, reg in enumerate(regions):
        assert np.all(w.level0[reg] == i)


def test_resume_checks_geometry(tmp_path):
    MultiscaleWriter(tmp_path / "y.ome.zarr", (20, 30, 40), np.uint16, (1, 1, 1), (8, 16, 16))
    again = MultiscaleWriter(tmp_path / "y.ome.zarr", (20, 30, 40), np.uint16, (1, 1, 1), (8, 16, 16), resume=True)
    assert again.done_blocks() == set()
    with pytest.raises(VolumeError, match="cannot resume"):
        MultiscaleWriter(tmp_path / "y.ome.zarr", (21, 30, 40), np.uint16, (1, 1, 1), (8, 16, 16), resume=True)


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_write_multiscale_output_validates_as_ngff(tmp_path, ngff):
    """The non-resumable writer (simulate, demo, test inputs) passes the NGFF validator like restore's."""
    from ome_zarr_models import open_ome_zarr

    write_multiscale(_golden_image(), tmp_path / "v.ome.zarr", (2.0, 0.5, 0.5), chunks=(8, 16, 16), ngff_version=ngff)
    group = zarr.open_group(str(tmp_path / "v.ome.zarr"), mode="r")
    open_ome_zarr(group)  # raises on invalid metadata
    ms = group.attrs.asdict()
    ms = (ms["ome"] if ngff == "0.5" else ms)["multiscales"][0]
    assert ms["type"] == "local_mean" and ms["metadata"]["method"].endswith("downsample_mean")
