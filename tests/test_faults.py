"""Faults rather than bad arguments: a second run on one output, a corrupt input chunk, a full disk, SIGTERM."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from ssai3d_dask.cli import main
from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.lock import RunLock, lock_path
from ssai3d_dask.io.omezarr import write_multiscale
from ssai3d_dask.io.volume import open_volume
from ssai3d_dask.restoration import task
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings

SMALL = dict(method="interp", chunks=(16, 16, 16), region=(16, 16, 16), halo=16, skip_empty=False)


@pytest.fixture
def stack(tmp_path):
    raw = np.random.default_rng(0).integers(100, 4000, (8, 64, 64)).astype(np.uint16)
    write_multiscale(raw, tmp_path / "in.ome.zarr", (2.0, 1.0, 1.0), chunks=(4, 16, 16))
    return tmp_path / "in.ome.zarr"


def _levels(path):
    g = zarr.open_group(str(path), mode="r")
    return [np.asarray(g[k][...]) for k in sorted(g.array_keys())]


def _holder(pid, host=None, start=None):
    import psutil

    return {"host": host or socket.gethostname(), "pid": pid, "started": "2026-01-01T00:00:00+00:00",
            "process_start": psutil.Process(pid).create_time() if start is None else start,
            "command": "ssai3d restore in.ome.zarr out.ome.zarr --resume", "token": "x"}


def test_a_second_run_on_a_held_output_is_refused_with_the_holder(stack, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "o.ome.zarr"
        lock_path(out).write_text(json.dumps(_holder(sleeper.pid)))
        res = CliRunner().invoke(main, ["-q", "restore", str(stack), str(out), "--method", "interp", "--overwrite"])
        assert res.exit_code == 2 and "being written by another run" in res.output
        assert f"pid {sleeper.pid}" in res.output and "--resume" in res.output
        assert len(res.output.strip().splitlines()) == 1 and not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_is_taken_over_and_released(stack, tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o.ome.zarr"
    lock_path(out).write_text(json.dumps(_holder(os.getpid(), start=1.0) | {"pid": dead.pid}))
    restore(open_volume(stack), None, out, RestoreSettings(**SMALL), progress=False)
    assert "taking over the stale lock" in caplog.text and not lock_path(out).exists()
    # another host: alive while its heartbeat is recent, stale once it is old
    other = _holder(os.getpid()) | {"host": "elsewhere"}
    lock_path(out).write_text(json.dumps(other))
    with pytest.raises(VolumeError, match="host elsewhere"):
        restore(open_volume(stack), None, out, RestoreSettings(**SMALL), overwrite=True, progress=False)
    old = time.time() - 3600
    os.utime(lock_path(out), (old, old))
    restore(open_volume(stack), None, out, RestoreSettings(**SMALL), overwrite=True, progress=False)


def test_the_lock_is_reentrant_within_a_run_and_exclusive_across_runs(tmp_path):
    out = tmp_path / "o.ome.zarr"
    with RunLock(out):
        with RunLock(out):  # `ssai3d run` holds it, then restore() takes it again
            pass
        assert lock_path(out).exists()  # the inner release keeps the outer lock
        holder = json.loads(lock_path(out).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not lock_path(out).exists()


def test_a_corrupt_input_chunk_fails_its_region_naming_the_chunk_and_stays_resumable(stack, tmp_path):
    s = RestoreSettings(**SMALL)
    restore(open_volume(stack), None, tmp_path / "whole.ome.zarr", s, progress=False)
    chunk = next(p for p in (stack / "0").rglob("*") if p.is_file() and p.name != "zarr.json" and
                 p.relative_to(stack / "0").parts[-3:] == ("1", "2", "3"))
    good = chunk.read_bytes()
    chunk.write_bytes(np.random.default_rng(1).bytes(64) + good[64:])
    out = tmp_path / "o.ome.zarr"
    res = CliRunner().invoke(main, ["-q", "restore", str(stack), str(out), "--method", "interp", "--chunks", "16", "16",
                                    "16", "--region", "16", "16", "16", "--halo", "16", "--no-skip-empty",
                                    "--workers", "1"])
    assert res.exit_code == 2, res.output
    assert "chunk (1, 2, 3)" in res.output and str(stack) in res.output and "--resume" in res.output
    assert "Traceback" not in res.output
    chunk.write_bytes(good)  # restored from a backup
    restore(open_volume(stack), None, out, s, resume=True, progress=False)
    for a, b in zip(_levels(out), _levels(tmp_path / "whole.ome.zarr")):
        np.testing.assert_array_equal(a, b)


def test_a_full_disk_names_the_output_and_leaves_it_resumable(stack, tmp_path, monkeypatch):
    s = RestoreSettings(**SMALL)
    restore(open_volume(stack), None, tmp_path / "whole.ome.zarr", s, progress=False)
    real, calls = task.write_region_levels, []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "write_region_levels", full)
    out = tmp_path / "o.ome.zarr"
    with pytest.raises(VolumeError, match="no space left to write .*o.ome.zarr.*still to write.*resume"):
        restore(open_volume(stack), None, out, s, progress=False)
    assert len(list((out / ".ssai3d" / "done").glob("*.json"))) == 3  # nothing half-recorded
    monkeypatch.setattr(task, "write_region_levels", real)
    restore(open_volume(stack), None, out, s, resume=True, progress=False)
    for a, b in zip(_levels(out), _levels(tmp_path / "whole.ome.zarr")):
        np.testing.assert_array_equal(a, b)


def test_sigterm_stops_cleanly_prints_the_resume_command_and_resume_gives_the_same_bytes(tmp_path):
    raw = np.random.default_rng(2).integers(100, 4000, (16, 128, 128)).astype(np.uint16)
    write_multiscale(raw, tmp_path / "in.ome.zarr", (2.0, 1.0, 1.0), chunks=(8, 32, 32))
    args = ["restore", str(tmp_path / "in.ome.zarr"), None, "--method", "rl", "--psf-sigma-um", "2", "1", "1",
            "--rl-iterations", "20", "--chunks", "16", "16", "16", "--region", "16", "16", "16", "--halo", "16",
            "--no-skip-empty", "--workers", "1", "--threads-per-worker", "1"]
    cli = [sys.executable, "-m", "ssai3d_dask.cli", "-q"]
    whole, out = tmp_path / "whole.ome.zarr", tmp_path / "o.ome.zarr"
    subprocess.run(cli + [a if a else str(whole) for a in args], check=True, capture_output=True)
    proc = subprocess.Popen(cli + [a if a else str(out) for a in args], stderr=subprocess.PIPE, text=True)
    done = out / ".ssai3d" / "done"
    deadline = time.time() + 120
    while time.time() < deadline and not (done.exists() and any(done.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    n_done = len(list(done.glob("*.json")))
    assert 0 < n_done < 2 * 8 * 8 and not lock_path(out).exists()
    res = subprocess.run(cli + [a if a else str(out) for a in args] + ["--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for a, b in zip(_levels(out), _levels(whole)):
        np.testing.assert_array_equal(a, b)


def test_a_killed_adaptation_rerun_reaches_the_same_weights(tmp_path, monkeypatch, caplog):
    """Fine-tuning checkpoints every --checkpoint-every steps; the same command after a kill continues from the
    last checkpoint (weights, optimiser, schedule, stop rule, random states) to the uninterrupted weights."""
    import torch

    from ssai3d_dask.adaptation import finetune as ft
    from ssai3d_dask.adaptation.adapt import adapt_dataset
    from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
    from ssai3d_dask.io.dataset import dataset_from_volume
    from ssai3d_dask.io.volume import Volume
    from ssai3d_dask.models.folder import load_folder
    from ssai3d_dask.settings import AdaptSettings, FinetuneSettings

    sim = simulate("strands", (32, 64, 64), seed=0, model=ForwardModel(0.5, 3.0, z_factor=2))
    ds = dataset_from_volume(Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(8, 64, 64)))
    s = AdaptSettings(n_patches=16, patch_px=32, finetune=FinetuneSettings(
        iterations=16, batch_size=2, eval_every=2, patience=6, cooldown=4, checkpoint_every=4))
    adapt_dataset(ds, tmp_path / "whole", s, progress=False)
    assert load_folder(tmp_path / "whole").manifest.history["steps"] > 9
    real = ft._Budget.__call__

    def killed(self, step):
        if step == 9:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(ft._Budget, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        adapt_dataset(ds, tmp_path / "m", s, progress=False)
    assert (tmp_path / "m" / ft.RESUME_FILE).exists()  # kept, although the folder is new
    monkeypatch.setattr(ft._Budget, "__call__", real)
    with caplog.at_level("INFO", logger="ssai3d_dask.adaptation.finetune"):  # whatever -q an earlier CLI test set
        adapt_dataset(ds, tmp_path / "m", s, progress=False)  # the same call: no --overwrite needed
    assert "resuming fine-tuning at step 8" in caplog.text and not (tmp_path / "m" / ft.RESUME_FILE).exists()
    a, b = load_folder(tmp_path / "whole"), load_folder(tmp_path / "m")
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k
    assert a.manifest.history["val_curve"] == b.manifest.history["val_curve"]
