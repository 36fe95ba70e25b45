"""Whole datasets: every channel and time point into one OME-Zarr, one model per channel."""

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from ssai3d_dask.cli import main
from ssai3d_dask.io.dataset import open_dataset, parse_selection
from ssai3d_dask.errors import Ssai3dError, VolumeError
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import open_volume

from .conftest import make_model_dir


def _two_channel(shape=(48, 64, 64)):
    """Channel 0 strands, channel 1 beads (different structures), raw at dz/dx = 4, uint16."""
    raws = [simulate(kind, shape, seed=i, model=ForwardModel(0.5, 3.0, z_factor=4)).raw
            for i, kind in enumerate(("strands", "beads"))]
    return np.stack([np.round(np.clip(r, 0, 1) * 60000).astype(np.uint16) for r in raws])


def _write_ngff(path, data, axes, labels=None):
    """A multiscale OME-Zarr 0.5 with non-spatial axes (t and/or c), voxel 0.4 x 0.1 x 0.1 um, channel labels."""
    from ssai3d_dask.io.omezarr import MultiscaleWriter

    lead = axes[:-3]
    w = MultiscaleWriter(path, data.shape[len(lead):], data.dtype, (0.4, 0.1, 0.1), (8, 32, 32), lead_axes=lead,
                         lead_shape=data.shape[:len(lead)], channel_labels=labels or (), name="input")
    w.level0[...] = data
    w.finalize()


def test_parse_selection():
    assert parse_selection("0,2", 3, "--channel") == [0, 2]
    assert parse_selection("1-3", 4, "--channel") == [1, 2, 3]
    assert parse_selection("all", 4, "--channel") is None and parse_selection(None, 4, "--channel") is None
    with pytest.raises(VolumeError, match="out of range"):
        parse_selection("5", 3, "--channel")
    with pytest.raises(VolumeError, match="not understood"):
        parse_selection("a,b", 3, "--time")


def test_two_channels_each_equal_restoring_it_alone(tmp_path, model_dir_factory):
    data = _two_channel()
    _write_ngff(tmp_path / "in.ome.zarr", data, "czyx", labels=["axons", "nuclei"])
    ds = open_dataset(tmp_path / "in.ome.zarr")
    assert ds.axes == "c" and ds.channels == [0, 1] and ds.labels == ["axons", "nuclei"]
    models = tmp_path / "models"
    for c in (0, 1):  # different weights per channel
        make_model_dir(models / f"c{c}", 4.0, high=60000.0, seed=c)
    s = RestoreSettings(chunks=(16, 32, 32), region=(32, 32, 64), halo=32, dtype="float32", skip_empty=False)
    out = tmp_path / "all.ome.zarr"
    restore(ds, models, out, s, progress=False)
    got = zarr.open_array(str(out / "0"))[...]
    assert got.shape == (2, 48, 64, 64)
    for c in (0, 1):
        alone = tmp_path / f"c{c}.ome.zarr"
        restore(open_volume(tmp_path / "in.ome.zarr", channel=c), models / f"c{c}", alone, s, progress=False)
        np.testing.assert_allclose(got[c], open_volume(alone).data.compute(), rtol=0, atol=1e-3)
    assert np.abs(got[0] - got[1]).mean() > 100  # two channels, two structures, two models
    # NGFF: validates, reads back with ome-zarr-py with the input's axes and per-channel omero entries
    from ome_zarr_models import open_ome_zarr

    open_ome_zarr(zarr.open_group(str(out), mode="r"))
    node = list(Reader(parse_url(str(out)))())[0]
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "z", "y", "x"]
    assert node.metadata["axes"][0]["type"] == "channel"
    omero = zarr.open_group(str(out)).attrs["ome"]["omero"]["channels"]
    assert [ch["label"] for ch in omero] == ["axons", "nuclei"] and omero[0]["color"] != omero[1]["color"]
    assert omero[0]["window"] != omero[1]["window"]
    assert open_volume(out, channel=1).voxel_size_um == (0.1, 0.1, 0.1)


def test_time_points_share_one_model_and_resume_per_slice(tmp_path, model_dir_factory):
    data = _two_channel()[:, None]  # (t=2, c=1, z, y, x): two time points of one channel
    _write_ngff(tmp_path / "t.ome.zarr", data, "tczyx")
    ds = open_dataset(tmp_path / "t.ome.zarr")
    assert ds.axes == "t" and ds.times == [0, 1] and ds.channels == [0]
    mdir = model_dir_factory(4.0, high=60000.0)
    s = RestoreSettings(chunks=(16, 32, 32), region=(32, 32, 64), halo=32, skip_empty=False)
    out = tmp_path / "o.ome.zarr"
    restore(ds, mdir, out, s, progress=False)
    node = list(Reader(parse_url(str(out)))())[0]
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "z", "y", "x"]
    full = zarr.open_array(str(out / "0"))[...]
    done = out / ".ssai3d" / "done"
    records = sorted(p.name for p in done.glob("*.json"))
    assert records[0].startswith("t0-") and records[-1].startswith("t1-") and len(records) == 2 * 2 * 2 * 1  # 2 time points x (2 x 2 x 1) regions
    for name in records[::3]:
        (done / name).unlink()
    lost = {name[:-5] for name in records[::3]}
    arr = zarr.open_array(str(out / "0"), mode="r+")
    arr[...] = 0  # the kept records must not be recomputed, the removed ones must
    restore(ds, mdir, out, s, resume=True, progress=False)
    again = zarr.open_array(str(out / "0"))[...]
    assert sorted(p.name[:-5] for p in done.glob("*.json")) == [r[:-5] for r in records]
    recomputed = np.zeros(again.shape, bool)
    from ssai3d_dask.restoration.plan import make_plan

    plan = make_plan((12, 64, 64), 4.0, s.chunks, s.region, (32,) * 3)
    for bid in lost:
        t = int(bid[1])
        recomputed[(t,) + plan.region(int(bid.split("-r")[1])).core] = True
    np.testing.assert_array_equal(again[recomputed], full[recomputed])
    assert not again[~recomputed].any()


def test_channel_models_must_match(tmp_path):
    _write_ngff(tmp_path / "in.ome.zarr", _two_channel((16, 32, 32)), "czyx")
    ds = open_dataset(tmp_path / "in.ome.zarr")
    make_model_dir(tmp_path / "m" / "c0", 4.0)
    s = RestoreSettings(chunks=(16, 32, 32), region=(16, 32, 32), halo=16)
    with pytest.raises(Ssai3dError, match="no model for c1 .*holds c0"):
        restore(ds, tmp_path / "m", tmp_path / "o.ome.zarr", s, progress=False)
    with pytest.raises(Ssai3dError, match="holds one model, this input has channels"):
        restore(ds, tmp_path / "m" / "c0", tmp_path / "o.ome.zarr", s, progress=False)
    assert not (tmp_path / "o.ome.zarr").exists()
    only = open_dataset(tmp_path / "in.ome.zarr", channels="0")
    restore(only, tmp_path / "m", tmp_path / "o.ome.zarr", s, progress=False)  # c0 alone is fine
    assert open_volume(tmp_path / "o.ome.zarr").shape == (16, 32, 32)


def test_imagej_tiff_channels(tmp_path):
    data = _two_channel((16, 32, 32))  # (c, z, y, x)
    tifffile.imwrite(tmp_path / "s.tif", data.transpose(1, 0, 2, 3), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZCYX", "spacing": 0.4, "unit": "um"})
    ds = open_dataset(tmp_path / "s.tif")
    assert ds.axes == "c" and ds.channels == [0, 1]
    out = tmp_path / "o.ome.zarr"
    restore(ds, None, out, RestoreSettings(method="interp", chunks=(16, 32, 32), region=(16, 32, 32)),
            progress=False)
    got = zarr.open_array(str(out / "0"))[...]
    for c in (0, 1):
        alone = tmp_path / f"{c}.ome.zarr"
        restore(open_volume(tmp_path / "s.tif", channel=c), None, alone,
                RestoreSettings(method="interp", chunks=(16, 32, 32), region=(16, 32, 32)), progress=False)
        np.testing.assert_array_equal(got[c], open_volume(alone).data.compute())


@pytest.mark.slow
def test_run_adapts_one_model_per_channel(tmp_path):
    _write_ngff(tmp_path / "in.ome.zarr", _two_channel((48, 64, 64)), "czyx", labels=["a", "b"])
    out = tmp_path / "o.ome.zarr"
    res = CliRunner().invoke(main, ["-q", "run", str(tmp_path / "in.ome.zarr"), str(out), "--n-patches", "16",
                                    "--patch-px", "32", "--iterations", "2", "--batch-size", "2", "--chunks", "16", "32",
                                    "32", "--region", "32", "32", "64", "--halo", "32",
                                    "--workers", "1", "--denoise", "off"])
    assert res.exit_code == 0, res.output
    mdir = tmp_path / "o.ome.zarr.model"
    assert (mdir / "c0" / "manifest.json").exists() and (mdir / "c1" / "manifest.json").exists()
    assert zarr.open_array(str(out / "0")).shape == (2, 48, 64, 64)
