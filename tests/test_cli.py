"""The ssai3d command: help, simulate -> info -> evaluate, and one-line errors with exit status 2."""

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from ssai3d_dask.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_subcommands_and_units(runner):
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("info", "simulate", "evaluate", "pretrain"):
        assert cmd in res.output
    res = runner.invoke(main, ["simulate", "--help"])
    assert "micrometres" in res.output and "--anisotropy" in res.output


def test_simulate_info_evaluate(runner, tmp_path):
    out = tmp_path / "sim"
    res = runner.invoke(main, ["simulate", "beads", str(out), "--shape", "32", "48", "48", "--anisotropy", "4",
                               "--voxel-size", "0.1", "0.1", "0.1", "--seed", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["info", str(out / "raw.ome.zarr"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["shape (z, y, x)"] == [8, 48, 48]
    assert d["voxel size (um)"] == [0.4, 0.1, 0.1]
    assert d["anisotropy dz/dx"] == 4.0 and d["isotropic shape"] == [32, 48, 48]
    res = runner.invoke(main, ["evaluate", str(out / "truth.ome.zarr"), "--truth", str(out / "truth.ome.zarr"),
                               "--raw", str(out / "raw.ome.zarr"), "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    table = json.loads((tmp_path / "m.json").read_text())
    assert table["prediction"]["ssim"] == pytest.approx(1.0)
    assert table["raw (linear z)"]["psnr_db"] < 40
    assert table["raw (linear z)"]["fourier_res_z_um"] > table["truth"]["fourier_res_z_um"]


def test_info_psf_prints_the_estimate_and_the_width_auto_trains_on(runner, tmp_path):
    out = tmp_path / "sim"
    res = runner.invoke(main, ["simulate", "strands", str(out), "--shape", "48", "96", "96", "--anisotropy", "2",
                               "--sigma-axial", "3", "--sigma-lateral", "0.5", "--seed", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["info", str(out / "raw.ome.zarr"), "--psf", "--json"])
    assert res.exit_code == 0, res.output
    est = json.loads(res.output)["sigma_px"]
    assert est == pytest.approx((3 ** 2 - 0.5 ** 2) ** 0.5, rel=0.15)  # the true extra axial sd, 2.96 px
    res = runner.invoke(main, ["info", str(out / "raw.ome.zarr"), "--psf"])
    assert res.exit_code == 0, res.output
    assert f"axial blur sd {est:.2f} px" in res.output and f"one PSF of sd {1.15 * est:.2f} px" in res.output


def test_simulate_tiff_output(runner, tmp_path):
    res = runner.invoke(main, ["simulate", "strands", str(tmp_path / "s.tif"), "--shape", "16", "32", "32",
                               "--anisotropy", "2", "--dtype", "uint16"])
    assert res.exit_code == 0, res.output
    raw = tifffile.imread(tmp_path / "s.tif")
    assert raw.shape == (8, 32, 32) and raw.dtype == np.uint16
    assert (tmp_path / "s_truth.tif").exists() and (tmp_path / "s.json").exists()


def test_existing_output_refused(runner, tmp_path):
    args = ["simulate", "spheres", str(tmp_path / "o"), "--shape", "16", "16", "16"]
    assert runner.invoke(main, args).exit_code == 0
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_info_lists_channels_and_time_points(runner, tmp_path):
    from tests.test_volume import _write_5d

    _write_5d(tmp_path / "tc.ome.zarr")
    res = runner.invoke(main, ["info", str(tmp_path / "tc.ome.zarr")])
    assert res.exit_code == 0, res.output
    assert "channels" in res.output and "time points" in res.output


def test_output_over_input_leaves_the_input_intact(runner, tmp_path):
    """Once, `restore IN IN --overwrite` deleted the input; the library refuses it too (not only the CLI)."""
    from ssai3d_dask.errors import VolumeError
    from ssai3d_dask.restoration.pipeline import restore
    from ssai3d_dask.settings import RestoreSettings
    from ssai3d_dask.io.volume import open_volume
    from tests.test_volume import _write_5d

    _write_5d(tmp_path / "tc.ome.zarr")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    vol = open_volume(tmp_path / "tc.ome.zarr", channel=0, time=0)
    with pytest.raises(VolumeError, match="is the input"):
        restore(vol, None, tmp_path / "tc.ome.zarr", RestoreSettings(method="interp"), overwrite=True, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
