"""Work per voxel: the computed-pixel ratio, and reads and writes overlapped with compute (issue 43)."""

import threading
import time

import numpy as np
import pytest

from ssai3d_dask.io.volume import Volume, open_volume
from ssai3d_dask.ops.padding import symmetric_pad
from ssai3d_dask.ops.resample import ZResampledCrop, resample_z_block
from ssai3d_dask.restoration import task
from ssai3d_dask.restoration.plan import (EDGE_PAD_PX, auto_region, computed_pixel_ratio, halo_work, make_plan,
                                         region_bytes)
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings


def test_computed_pixel_ratio_counts_the_halo_inside_the_volume_and_the_edge_beyond_it():
    plan = make_plan((64, 1024, 1024), 2.0, (64, 128, 128), (128, 256, 256), (96, 96, 96))
    keep = np.ones(plan.grid, bool)
    assert plan.edge == (EDGE_PAD_PX,) * 3 == (32, 32, 32)
    # z: the one region spans the volume, so its slices have 32 rows of reflection on each side, not 96;
    # y and x: the halo is 96 inside the volume and 32 beyond its faces
    ez, ey = 128 + 64, np.array([32 + 256 + 96, 96 + 256 + 96, 96 + 256 + 96, 96 + 256 + 32])
    assert [list(e) for e in plan.ext_lengths()] == [[ez], list(ey), list(ey)]
    one_pass = 256 * ez * ey.sum() * 4 / (128 * 1024 * 1024)  # the x (or y) slices of every region, over voxels
    assert computed_pixel_ratio(plan, keep, "mean") == pytest.approx(one_pass)
    assert computed_pixel_ratio(plan, keep, "xz") == pytest.approx(one_pass)
    assert computed_pixel_ratio(plan, keep, "volume") == pytest.approx(ez * ey.sum() ** 2 / (128 * 1024 * 1024))
    flat = make_plan((64, 1024, 1024), 2.0, (64, 128, 128), (128, 256, 256), (0, 0, 0))
    assert computed_pixel_ratio(flat, keep, "mean") == pytest.approx(1.0)


def test_local_restore_reads_the_next_region_while_computing_and_writes_behind(tmp_path, monkeypatch):
    """Without a cluster the next crop is read while a region computes, and a region is written while the
    next computes; the result is the same as without overlap (the whole-volume interpolation)."""
    rng = np.random.default_rng(0)
    raw = rng.random((8, 64, 64), np.float32)
    vol = Volume.from_array(raw, (2, 1, 1), chunks=(4, 16, 16))
    s = RestoreSettings(method="interp", chunks=(16, 16, 16), region=(16, 32, 32), halo=16, skip_empty=False,
                        dtype="float32")
    events, lock = [], threading.Lock()

    def log(name, fn):
        def wrapped(*a, **k):
            with lock:
                events.append((name, "start", threading.current_thread().name, time.perf_counter()))
            out = fn(*a, **k)
            time.sleep(0.05)  # long enough for the other stages to show they run meanwhile
            with lock:
                events.append((name, "end", threading.current_thread().name, time.perf_counter()))
            return out
        return wrapped

    monkeypatch.setattr(task, "read_region", log("read", task.read_region))
    monkeypatch.setattr(task, "compute_read_region", log("compute", task.compute_read_region))
    monkeypatch.setattr(task, "write_region", log("write", task.write_region))
    restore(vol, None, tmp_path / "o.ome.zarr", s, progress=False)
    n = 4  # 16 x 64 x 64 output in 16 x 32 x 32 regions
    assert sum(1 for e in events if e[:2] == ("write", "end")) == n
    threads = {e[0]: e[2] for e in events}
    assert threads["read"].startswith("ssai3d-read") and threads["write"].startswith("ssai3d-write")

    def busy(name):
        starts = [e[3] for e in events if e[0] == name and e[1] == "start"]
        ends = [e[3] for e in events if e[0] == name and e[1] == "end"]
        return list(zip(starts, ends))

    computes = busy("compute")
    overlaps = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
    assert sum(any(overlaps(r, c) for c in computes) for r in busy("read")) >= n - 2
    assert sum(any(overlaps(w, c) for c in computes) for w in busy("write")) >= n - 2
    whole = np.asarray(open_volume(tmp_path / "o.ome.zarr").data.compute())
    from ssai3d_dask.ops.resample import resample_z_block

    np.testing.assert_allclose(whole, resample_z_block(raw, 0, slice(0, 16), 2.0), atol=1e-5)


def test_auto_region_fits_its_budget_covers_no_more_than_the_output_and_grows_with_memory():
    out = (256, 2048, 2048)
    ratios = []
    for gib in (0.5, 1, 2, 4, 8):
        r = auto_region(out, (64, 128, 128), 96, int(gib * 2**30))
        assert all(n % u == 0 for n, u in zip(r, (64, 128, 128)))
        assert region_bytes(r, 96) <= gib * 2**30 or r == (64, 128, 128)  # one chunk is the floor
        assert all(n <= o for n, o in zip(r, out))
        ratios.append(halo_work(r, 96, "mean") / (2 * np.prod(r)))
    assert ratios == sorted(ratios, reverse=True) and ratios[-1] < 0.6 * ratios[0]
    # a small volume gets one region, and its shards are the region unless given
    assert auto_region((64, 256, 256), (64, 128, 128), 96, 16 * 2**30) == (64, 256, 256)
    s = RestoreSettings(shards=(64, 256, 256))
    assert s.region is None and s.shard_shape((128, 512, 512)) == (64, 256, 256)
    assert RestoreSettings().shard_shape((128, 512, 512)) == (128, 512, 512)
    with pytest.raises(ValueError, match="region-memory"):
        RestoreSettings(region_memory="lots")


def test_zarrs_codec_pipeline_is_used_when_installed_and_writes_the_same_data(tmp_path):
    pytest.importorskip("zarrs")
    import subprocess
    import sys

    import zarr

    from ssai3d_dask.io.codecs import DEFAULT, ZARRS

    code = "import ssai3d_dask.io, zarr; print(zarr.config.get('codec_pipeline.path'))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == ZARRS
    env = dict(__import__("os").environ, SSAI3D_CODECS="zarr")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env).stdout.strip() == DEFAULT
    raw = np.random.default_rng(0).integers(0, 60000, (8, 64, 64)).astype(np.uint16)
    vol = Volume.from_array(raw, (2, 1, 1), chunks=(4, 32, 32))
    s = RestoreSettings(method="interp", chunks=(16, 32, 32), region=(16, 64, 64), skip_empty=False)
    outs = {}
    for pipeline in (DEFAULT, ZARRS):
        with zarr.config.set({"codec_pipeline.path": pipeline}):
            restore(vol, None, tmp_path / f"{pipeline}.ome.zarr", s, progress=False)
        outs[pipeline] = np.asarray(open_volume(tmp_path / f"{pipeline}.ome.zarr").data.compute())
    np.testing.assert_array_equal(outs[DEFAULT], outs[ZARRS])


@pytest.mark.parametrize("pad", [((0, 0), (0, 0), (0, 0)), ((3, 5), (2, 0), (0, 4)), ((30, 17), (9, 11), (13, 8))])
def test_slab_at_a_time_crop_equals_the_resampled_padded_array(pad):
    """What a region task computes from a slab at a time is the z-resampled, reflect-padded crop, including
    mirrors wider than the crop (tiny blocks at a face), and its extrema are those of that array."""
    rng = np.random.default_rng(1)
    planes = rng.random((7, 9, 6), np.float32)
    z0_in, z_range, f = 3, (7, 20), 2.5  # output planes 7..19 from input planes 3..9
    ref = symmetric_pad(resample_z_block(planes, z0_in, slice(*z_range), f), pad)
    lazy = ZResampledCrop(planes, z0_in, z_range, f, pad)
    assert lazy.shape == ref.shape and lazy.size == ref.size
    np.testing.assert_array_equal(np.asarray(lazy), ref)
    for key in [(slice(None), slice(2, 5), slice(None)), (slice(None), slice(None), slice(0, 3)),
                (slice(4, 11), slice(1, -1), slice(5, None)), (slice(None), 0, slice(None))]:
        np.testing.assert_array_equal(lazy[key], ref[key])
    assert (lazy.min(), lazy.max()) == (ref.min(), ref.max())
