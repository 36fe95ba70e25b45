"""A corpus of realistic bad inputs across the commands.

Each must end with exit status 2 and one line naming the problem (a key phrase is checked), no traceback,
and nothing left behind: the working folder and the inputs are exactly as before.
"""

import datetime
import shutil

import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import CliRunner

from ssai3d_dask.cli import main
from ssai3d_dask.io.omezarr import write_multiscale

from .test_volume import _write_5d


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "x.txt").write_text("hello")
    tifffile.imwrite(d / "plane.tif", np.zeros((8, 8), np.uint16))
    zarr.save_array(str(d / "plain.zarr"), np.zeros((4, 8, 8), np.uint16))
    zarr.save_array(str(d / "single.zarr"), np.ones((1, 32, 32), np.uint16))
    zarr.save_array(str(d / "bool.zarr"), np.ones((4, 32, 32), bool))
    zarr.save_array(str(d / "complex.zarr"), np.ones((4, 32, 32), np.complex64))
    _write_5d(d / "tc.ome.zarr")
    rng = np.random.default_rng(0)
    stack = rng.integers(100, 4000, (8, 64, 64)).astype(np.uint16)
    write_multiscale(stack, d / "stack.ome.zarr", (2.0, 1.0, 1.0), chunks=(8, 32, 32))
    write_multiscale(stack, d / "other.ome.zarr", (2.0, 1.0, 1.0), chunks=(8, 32, 32))
    write_multiscale(stack[:, :32], d / "smaller.ome.zarr", (2.0, 1.0, 1.0), chunks=(8, 32, 32))
    write_multiscale(stack, d / "aniso.ome.zarr", (200.0, 1.0, 1.0), chunks=(8, 32, 32))
    write_multiscale(np.full((8, 32, 32), 7, np.uint16), d / "constant.ome.zarr", (1, 1, 1), chunks=(8, 32, 32))
    nan = np.ones((8, 32, 32), np.float32)
    nan[3, 4, 4] = np.nan
    write_multiscale(nan, d / "nan.ome.zarr", (1, 1, 1), chunks=(8, 32, 32))
    write_multiscale(nan[:, :, :], d / "nanpred.ome.zarr", (1, 1, 1), chunks=(8, 32, 32))
    write_multiscale(np.ones((8, 32, 32), np.float32) + rng.random((8, 32, 32), np.float32), d / "truth.ome.zarr",
                     (1, 1, 1), chunks=(8, 32, 32))
    g = zarr.open_group(str(d / "nodatasets.ome.zarr"), mode="w", zarr_format=3)
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": a, "type": "space"} for a in "zyx"]}]}
    shutil.copytree(d / "stack.ome.zarr", d / "missing.ome.zarr")
    shutil.rmtree(d / "missing.ome.zarr" / "0")
    tifffile.imwrite(d / "full.tif", stack[:, :32, :32], imagej=True, resolution=(1, 1),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    data = (d / "full.tif").read_bytes()
    (d / "trunc.tif").write_bytes(data[: len(data) // 2])
    (d / "nopages.tif").write_bytes(data[:8])  # the 8-byte header only: offset to the first page past the end
    (d / "mixed").mkdir()
    for i in range(4):
        tifffile.imwrite(d / "mixed" / f"p{i}.tif", np.zeros((32, 32) if i != 2 else (16, 32), np.uint16))
    (d / "random.pt").write_bytes(rng.bytes(4096))
    torch.save({"when": datetime.datetime(2020, 1, 1)}, d / "pickled.pt")
    np.save(d / "objpsf.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "model_file").write_text("not a folder")
    for version, meta in (("0.4", ".zattrs"), ("0.5", "zarr.json")):
        name = f"badjson{version}.ome.zarr"
        write_multiscale(stack, d / name, (2.0, 1.0, 1.0), chunks=(8, 32, 32), ngff_version=version)
        (d / name / meta).write_text((d / name / meta).read_text()[:40])  # cut short: not JSON
    torch.save({"model": {}, "when": datetime.datetime(2020, 1, 1)}, d / "pk.pt.resume.pt")
    res = CliRunner().invoke(main, ["-q", "restore", str(d / "stack.ome.zarr"), str(d / "prev.ome.zarr"), "--method",
                                    "interp", "--chunks", "16", "32", "32", "--region", "16", "64", "64", "--workers", "1"])
    assert res.exit_code == 0, res.output
    return d


def _listing(*folders):
    return {str(p) for f in folders for p in f.rglob("*")}


CASES = [
    # info
    (["info", "does-not-exist.tif"], "not found"),
    (["info", "{in}/x.txt"], "unsupported input"),
    (["info", "{in}/plane.tif", "--voxel-size", "1", "1", "1"], "not a 3D volume"),
    (["info", "{in}/plain.zarr"], "--voxel-size"),
    (["info", "{in}/plain.zarr", "--voxel-size", "0", "1", "1"], "positive"),
    (["info", "{in}/plain.zarr", "--voxel-size", "nan", "1", "1"], "NaN or Inf"),
    (["info", "{in}/tc.ome.zarr", "--channel", "9"], "out of range"),
    (["info", "{in}/stack.ome.zarr", "--channel", "1"], "has no channel axis"),
    (["info", "{in}/nodatasets.ome.zarr"], "lists no datasets"),
    (["info", "{in}/missing.ome.zarr"], "does not exist in the store"),
    (["info", "{in}/trunc.tif"], "looks truncated"),
    (["info", "{in}/nopages.tif"], "holds no images"),
    (["info", "{in}/bool.zarr", "--voxel-size", "1", "1", "1"], "not intensities"),
    (["info", "{in}/complex.zarr", "--voxel-size", "1", "1", "1"], "not intensities"),
    (["info", "{in}/single.zarr", "--voxel-size", "2", "1", "1"], "at least 2 planes"),
    (["info", "{in}/mixed", "--voxel-size", "2", "1", "1"], "one shape and type"),
    (["info", "{in}/badjson0.4.ome.zarr"], ".zattrs is not valid JSON"),
    (["info", "{in}/badjson0.5.ome.zarr"], "zarr.json is not valid JSON"),
    # restore
    (["restore", "{in}/tc.ome.zarr", "{in}/tc.ome.zarr", "--method", "interp", "--overwrite"], "is the input"),
    (["restore", "{in}/tc.ome.zarr", "{in}/tc.ome.zarr/out.ome.zarr", "--method", "interp", "--overwrite"],
     "lies inside the input"),
    (["restore", "{in}/tc.ome.zarr", "{in}", "--method", "interp", "--overwrite"], "contains the input"),
    (["restore", "{in}/stack.ome.zarr", "{in}/other.ome.zarr", "--method", "interp"], "already exists"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "interp", "--workers", "-1"], r"workers (--workers)"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "interp", "--cluster", "tcp://127.0.0.1:9"],
     "cannot reach the Dask scheduler"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "interp", "--memory-limit", "lots"],
     "is not a size"),
    (["restore", "{in}/nan.ome.zarr", "o.ome.zarr", "--method", "interp"], "NaN or Inf"),
    (["restore", "{in}/tc.ome.zarr", "o.ome.zarr", "--method", "interp", "--channel", "0,9"], "out of range"),
    (["restore", "{in}/tc.ome.zarr", "o.ome.zarr", "--method", "interp", "--time", "x"], "not understood"),
    (["restore", "{in}/aniso.ome.zarr", "o.ome.zarr", "--method", "interp"], "anisotropy dz/dx = 200"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr"], "needs --model"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "care", "--model", "nowhere"],
     "not a model folder"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "rl"], "needs the PSF"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "rl", "--psf-file", "{in}/objpsf.npy"],
     "cannot read PSF"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "interp", "--psf-sigma-um", "1", "1", "1"],
     "are for --method rl"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "interp", "--chunks", "10", "16", "16"],
     "multiples of 16"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "interp", "--region", "32", "48", "48"],
     "whole number of --chunks"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--method", "interp", "--batch", "0"], "--batch"),
    (["restore", "{in}/stack.ome.zarr", "{in}/x.txt/o.ome.zarr", "--method", "interp"], "is a file, not a folder"),
    (["restore", "{in}/stack.ome.zarr", "o.ome.zarr", "--config", "missing.yaml"], "not found"),
    (["restore", "{in}/stack.ome.zarr", "restored.tif", "--method", "interp"], "names a TIFF file"),
    (["restore", "{in}/stack.ome.zarr", "{in}/prev.ome.zarr", "--method", "rl", "--psf-sigma-um", "1", "0.2", "0.2",
      "--chunks", "16", "32", "32", "--region", "16", "64", "64", "--resume"], "first run's options"),
    # run and adapt
    (["run", "{in}/tc.ome.zarr", "{in}/tc.ome.zarr", "--overwrite"], "is the input"),
    (["run", "{in}/stack.ome.zarr", "o.ome.zarr", "--model", "{in}/model_file", "--patch-px", "32"], "is a file"),
    (["run", "{in}/aniso.ome.zarr", "o.ome.zarr"], "anisotropy dz/dx = 200"),
    (["adapt", "{in}/stack.ome.zarr", "m", "--n-patches", "0"], "--n-patches"),
    (["adapt", "{in}/stack.ome.zarr", "m", "--batch-size", "0"], "--batch-size"),
    (["adapt", "{in}/stack.ome.zarr", "m", "--sigmas-px", "0,3"], "--sigmas-px"),
    (["adapt", "{in}/stack.ome.zarr", "m", "--patch-px", "128"], "exceeds the lateral size"),
    (["adapt", "{in}/stack.ome.zarr", "m", "--base", "{in}/random.pt", "--patch-px", "32"],
     "not a PyTorch checkpoint"),
    (["adapt", "{in}/stack.ome.zarr", "m", "--base", "{in}/pickled.pt", "--patch-px", "32"], "pickled code"),
    (["adapt", "{in}/stack.ome.zarr", "{in}/other.ome.zarr", "--patch-px", "32"], "already exists"),
    (["train-care", "{in}/stack.ome.zarr", "c"], "psf_sigma_um"),
    (["pretrain", "p.pt", "--init", "{in}/random.pt", "--iterations", "1"], "not a PyTorch checkpoint"),
    (["pretrain", "{in}/pk.pt", "--iterations", "1"], "pickled code"),
    # simulate, evaluate, demo
    (["simulate", "beads", "s", "--shape", "0", "64", "64"], "sizes >= 8"),
    (["simulate", "beads", "s", "--shape", "4", "64", "64"], "sizes >= 8"),
    (["simulate", "beads", "s", "--anisotropy", "0"], "--anisotropy"),
    (["simulate", "beads", "s", "--voxel-size", "0", "1", "1"], "positive"),
    (["simulate", "beads", "s", "--shape", "100000", "100000", "100000"], "give a smaller --shape"),
    (["evaluate", "{in}/truth.ome.zarr", "--truth", "{in}/constant.ome.zarr", "--json", "m.json"], "is constant"),
    (["evaluate", "{in}/nanpred.ome.zarr", "--truth", "{in}/truth.ome.zarr", "--json", "m.json"], "NaN or Inf"),
    (["evaluate", "{in}/smaller.ome.zarr", "--truth", "{in}/stack.ome.zarr", "--json", "m.json"], "differ in shape"),
    (["evaluate", "{in}/truth.ome.zarr", "--truth", "{in}/truth.ome.zarr", "--data-range", "0", "--json", "m.json"],
     "--data-range must be positive"),
    (["demo", "d", "--shape", "8", "16", "16"], "too small"),
]


@pytest.mark.parametrize("args,phrase", CASES, ids=[" ".join(a[:2] + a[2:4]) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(inputs, tmp_path, monkeypatch, args, phrase):
    monkeypatch.chdir(tmp_path)
    before = _listing(inputs, tmp_path)
    res = CliRunner().invoke(main, ["-q", *[a.replace("{in}", str(inputs)) for a in args]])
    assert res.exit_code == 2, res.output
    assert phrase in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert _listing(inputs, tmp_path) == before


def test_corpus_is_large_enough():
    assert len(CASES) >= 30 and len({a[0] for a, _ in CASES}) >= 7


@pytest.mark.parametrize("fail_after", [0, 2])
def test_failed_restore_leaves_no_output_or_a_resumable_one(tmp_path, monkeypatch, caplog, fail_after):
    """A failure before any region is written leaves no output; a later one leaves a resumable output that
    --resume completes to the same bytes as an uninterrupted run."""
    from ssai3d_dask.io.volume import Volume
    from ssai3d_dask.restoration import task
    from ssai3d_dask.restoration.pipeline import restore
    from ssai3d_dask.settings import RestoreSettings

    vol = Volume.from_array(np.random.default_rng(1).random((8, 32, 32), np.float32), (2, 1, 1), chunks=(4, 16, 16))
    s = RestoreSettings(method="interp", chunks=(16, 16, 16), region=(16, 16, 16), halo=16, skip_empty=False)
    restore(vol, None, tmp_path / "whole.ome.zarr", s, progress=False)
    real, calls = task.compute_region, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > fail_after:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "compute_region", failing)
    out = tmp_path / "o.ome.zarr"
    with pytest.raises(OSError, match="disk full"):
        restore(vol, None, out, s, progress=False)
    if fail_after == 0:
        assert not out.exists() and "nothing was kept" in caplog.text
        return
    assert out.exists() and "is resumable" in caplog.text
    monkeypatch.undo()
    restore(vol, None, out, s, resume=True, progress=False)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[...], zarr.open_array(str(tmp_path / "whole.ome.zarr" / "0"))[...])


def test_evaluate_json_goes_into_a_new_folder(inputs, tmp_path):
    res = CliRunner().invoke(main, ["-q", "evaluate", str(inputs / "truth.ome.zarr"), "--truth",
                                    str(inputs / "truth.ome.zarr"), "--json", str(tmp_path / "a" / "b" / "m.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "b" / "m.json").exists()


def test_output_in_a_read_only_folder_is_refused_before_work(inputs, tmp_path, monkeypatch):
    """(Run as root, permissions are not enforced; the check reads them.)"""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    res = CliRunner().invoke(main, ["-q", "restore", str(inputs / "stack.ome.zarr"), str(tmp_path / "o.ome.zarr"),
                                    "--method", "interp"])
    assert res.exit_code == 2 and "no write permission" in res.output
    assert not (tmp_path / "o.ome.zarr").exists()
