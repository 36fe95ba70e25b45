"""Terabyte orchestration: O(1) tasks, bounded submission, pruning, sharding, task-written pyramid, dry run."""

import json
import pickle
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from ssai3d_dask.cli import main
from ssai3d_dask.errors import VolumeError
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.io.omezarr import MultiscaleWriter, write_multiscale, write_region_levels
from ssai3d_dask.restoration.pipeline import prepare_restore, restore
from ssai3d_dask.restoration.task import run_region
from ssai3d_dask.restoration.plan import computed_pixel_ratio
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.restoration.scheduling import task_payload
from ssai3d_dask.evaluation.simio import write_sparse_volume
from ssai3d_dask.io.volume import open_volume


def _sparse(path, shape, chunks=(16, 64, 64), n_blocks=1, **kw):
    write_sparse_volume(path, shape, chunks, (0.4, 0.1, 0.1), n_blocks=n_blocks, seed=3, kind="beads", **kw)
    return open_volume(path)


def test_task_payload_does_not_grow_with_region_count(tmp_path):
    """A task carries its region, the plan, a source handle and a spec; none of them lists the regions."""
    sizes, build = {}, {}
    s = RestoreSettings(method="interp", chunks=(16, 16, 16), region=(16, 16, 16), halo=16)
    for n_side, name in ((10, "1e3"), (100, "1e6")):
        vol = _sparse(tmp_path / f"v{name}.ome.zarr", (4 * n_side, 16 * n_side, 16 * n_side), pyramid=False)
        t0 = time.perf_counter()
        job = prepare_restore(vol, None, s)
        build[name] = time.perf_counter() - t0
        assert job.plan.n_regions == n_side ** 3
        last = job.plan.n_regions - 1
        payloads = [task_payload(job, "out.ome.zarr", i) for i in (0, last // 2, last)]
        assert max(len(pickle.dumps(p)) for p in payloads) < 2048
        # Without the pyramid layout (one entry per level: it grows with log(volume), at most 13 entries) ...
        sizes[name] = [len(pickle.dumps(p[:4] + (p[4].replace(levels=()),))) for p in payloads]
        assert len(job.spec.levels) <= 13
    # ... a task is the same size at a thousand and at a million regions (larger ints in shapes and the index).
    assert max(sizes["1e6"]) - min(sizes["1e3"]) <= 32
    assert build["1e6"] < 30  # planning and pruning a million regions is vectorised, not a Python loop per region


def test_sparse_volume_prunes_unwritten_regions_and_matches_computing_everything(tmp_path):
    vol = _sparse(tmp_path / "s.ome.zarr", (24, 384, 320), n_blocks=2, pyramid=False)
    s = dict(method="interp", chunks=(16, 32, 32), region=(32, 64, 64), halo=16, dtype="float32")
    job = prepare_restore(vol, None, RestoreSettings(**s))
    assert 0 < job.keep.sum() < job.keep.size and job.pruned["unwritten"] == job.keep.size - job.keep.sum()
    restore(vol, None, tmp_path / "sparse.ome.zarr", RestoreSettings(**s), progress=False)
    restore(vol, None, tmp_path / "dense.ome.zarr", RestoreSettings(**s, skip_empty=False), progress=False)
    for level in range(len(zarr.open_group(str(tmp_path / "dense.ome.zarr")))):
        a = zarr.open_array(str(tmp_path / "sparse.ome.zarr" / str(level)))[...]
        b = zarr.open_array(str(tmp_path / "dense.ome.zarr" / str(level)))[...]
        np.testing.assert_array_equal(a, b)
    done = list((tmp_path / "sparse.ome.zarr" / ".ssai3d" / "done").glob("*.json"))
    assert len(done) == job.keep.sum()
    attrs = zarr.open_group(str(tmp_path / "sparse.ome.zarr")).attrs["ssai3d"]["regions"]
    assert attrs["pruned_unwritten"] == job.pruned["unwritten"]


@pytest.mark.parametrize("method", ["interp", "ssai3d"])
def test_pruned_regions_read_what_computing_them_gives(tmp_path, model_dir_factory, method):
    """Written chunks carry a camera offset (background 874) while unwritten chunks read 0: pruned regions
    must read what computing them gives (0 for interp, the network's output on 0 for ssai3d), not the
    normalisation's low level, or the background becomes a checkerboard of pruned and computed blocks."""
    vol = _sparse(tmp_path / "s.ome.zarr", (6, 256, 256), n_blocks=1, pyramid=False, background=874)
    model = None
    kw = dict(method=method, chunks=(16, 32, 32), region=(32, 64, 64), dtype="uint16")
    if method == "ssai3d":
        model = model_dir_factory(4.0, low=874.0, high=30000.0)
        kw["halo"] = 32
    else:
        kw["halo"] = 16
    job = prepare_restore(vol, model, RestoreSettings(**kw))
    assert job.pruned["unwritten"] >= 4 and job.norm.low >= 874
    if method == "interp":
        assert job.fill_value == 0
    restore(vol, model, tmp_path / "pruned.ome.zarr", RestoreSettings(**kw), progress=False)
    restore(vol, model, tmp_path / "all.ome.zarr", RestoreSettings(**kw, skip_empty=False), progress=False)
    for level in range(len(zarr.open_group(str(tmp_path / "all.ome.zarr")))):
        a = zarr.open_array(str(tmp_path / "pruned.ome.zarr" / str(level)))[...]
        b = zarr.open_array(str(tmp_path / "all.ome.zarr" / str(level)))[...]
        np.testing.assert_array_equal(a, b)
    far = zarr.open_array(str(tmp_path / "pruned.ome.zarr" / "0"))[...]
    assert (far == job.fill_value).mean() > 0.25  # the pruned background reads the computed level


def test_a_constant_crop_restores_to_one_level_whatever_its_shape(model_dir_factory):
    """A strided network answers a flat slice with a 16-px pattern; a constant crop restores to the pattern's
    mean instead, the same for every region shape, so pruned and computed constant regions agree."""
    from ssai3d_dask.models.folder import cached_folder
    import torch

    from ssai3d_dask.restoration.kernels import constant_level, restore_block, run_slices

    model = cached_folder(model_dir_factory(2.0)).model
    flat = run_slices(model, np.full((1, 64, 64), -0.3, np.float32), None, torch.device("cpu"))[0, 24:40, 24:40]
    assert np.ptp(flat) > 1e-2  # the pattern this avoids
    level = constant_level(model, -0.3, 24)
    assert level == pytest.approx(float(flat.mean()), abs=1e-3) and abs(level + 0.3) > 1e-3
    for shape in ((32, 24, 40), (16, 48, 16)):
        ext = np.full(tuple(s + 48 for s in shape), -0.3, np.float32)
        out = restore_block(ext, (24, 24, 24), shape, model)
        assert out.shape == shape and np.all(out == np.float32(level))


def test_skip_background_interpolates_dim_regions_only_when_asked(tmp_path):
    """Every chunk written (background 100, tissue in one corner): by default every region is computed (no
    guess from the coarse level); with --skip-background the dim ones take the interpolation and say so."""
    rng = np.random.default_rng(0)
    raw = np.full((24, 256, 256), 100, np.uint16)
    raw[:, :48, :48] += rng.integers(0, 3000, (24, 48, 48)).astype(np.uint16)
    write_multiscale(raw, tmp_path / "bg.ome.zarr", (0.4, 0.1, 0.1), chunks=(8, 32, 32))
    vol = open_volume(tmp_path / "bg.ome.zarr")
    s = dict(method="rl", psf_sigma_um=(0.3, 0.1, 0.1), rl_iterations=3, chunks=(16, 32, 32), region=(32, 64, 64),
             halo=16)
    job = prepare_restore(vol, None, RestoreSettings(**s))
    assert job.pruned["unwritten"] == 0 and job.keep.all()
    restore(vol, None, tmp_path / "all.ome.zarr", RestoreSettings(**s), progress=False)
    restore(vol, None, tmp_path / "skip.ome.zarr", RestoreSettings(**s, skip_background=True), progress=False)
    records = [json.loads(p.read_text()) for p in (tmp_path / "skip.ome.zarr" / ".ssai3d" / "done").glob("*.json")]
    assert 0 < sum(r["skipped"] for r in records) < len(records)
    a = open_volume(tmp_path / "all.ome.zarr").data.compute()
    b = open_volume(tmp_path / "skip.ome.zarr").data.compute()
    np.testing.assert_array_equal(a[:, :32, :32], b[:, :32, :32])  # the tissue corner: restored in both
    assert np.abs(b[:, 160:, 160:].astype(int) - 100).max() <= 1  # far background: interpolated, at 100


def test_a_regions_shards_are_written_by_that_region_only(tmp_path):
    raw = np.random.default_rng(1).integers(1, 1000, (32, 256, 256)).astype(np.uint16)
    write_multiscale(raw, tmp_path / "in.ome.zarr", (0.4, 0.1, 0.1), chunks=(8, 64, 64))
    vol = open_volume(tmp_path / "in.ome.zarr")
    s = RestoreSettings(method="interp", chunks=(16, 32, 32), region=(64, 128, 128), halo=16, skip_empty=False)
    job = prepare_restore(vol, None, s)
    assert [lv.in_task for lv in job.levels][:3] == [True, True, False]  # level 2: 16 x 32 x 32 < 2**15 voxels
    for i, region in enumerate(job.plan):
        out = tmp_path / f"one{i}.ome.zarr"
        MultiscaleWriter(out, job.plan.out_shape, job.dtype, (0.1, 0.1, 0.1), job.plan.chunks,
                         region_shape=job.plan.region_shape, shards=s.shard_shape())
        before = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
        run_region(job.plan, region, job.source, str(out), job.spec)
        new = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {str(p) for p in before}
        expect = {f".ssai3d/done/{region.block_id}.json"}
        for level, lv in enumerate(job.levels):
            if not lv.in_task:
                break
            box = lv.box(region.core)
            assert all(b.start % sh == 0 for b, sh in zip(box, lv.shards))  # shard-aligned ...
            assert all(b.stop % sh == 0 or b.stop == n for b, sh, n in zip(box, lv.shards, lv.shape))  # ... whole
            idx = [range(b.start // sh, -(-b.stop // sh)) for b, sh in zip(box, lv.shards)]
            expect |= {f"{level}/c/{z}/{y}/{x}" for z in idx[0] for y in idx[1] for x in idx[2]}
        assert new == expect, (new, expect)
        if i == 2:
            break


def test_resume_with_other_settings_is_refused(tmp_path):
    vol = _sparse(tmp_path / "in.ome.zarr", (16, 64, 64), n_blocks=1, pyramid=False)
    s = dict(chunks=(16, 32, 32), region=(32, 64, 64), halo=16)
    restore(vol, None, tmp_path / "o.ome.zarr", RestoreSettings(method="interp", **s), progress=False)
    with pytest.raises(VolumeError, match="another .*method"):
        restore(vol, None, tmp_path / "o.ome.zarr", RestoreSettings(method="rl", psf_sigma_um=(0.2, 0.1, 0.1), **s),
                resume=True, progress=False)
    with pytest.raises(VolumeError, match="cannot resume.*shards"):
        restore(vol, None, tmp_path / "o.ome.zarr", RestoreSettings(method="interp", sharding=False, **s),
                resume=True, progress=False)


@pytest.mark.parametrize("ngff,sharding", [("0.5", True), ("0.5", False), ("0.4", False)])
def test_output_validates_as_ngff_and_reads_back(tmp_path, ngff, sharding):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models import open_ome_zarr

    vol = _sparse(tmp_path / "in.ome.zarr", (16, 128, 96), n_blocks=2, pyramid=False)
    out = tmp_path / "o.ome.zarr"
    restore(vol, None, out, RestoreSettings(method="interp", chunks=(16, 32, 32), region=(32, 64, 64), halo=16,
                                            ngff_version=ngff, sharding=sharding), progress=False)
    open_ome_zarr(zarr.open_group(str(out), mode="r"))  # raises on invalid metadata
    node = list(Reader(parse_url(str(out)))())[0]
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    np.testing.assert_array_equal(np.asarray(node.data[0]), open_volume(out).data.compute())
    arr = zarr.open_array(str(out / "0"))
    assert (arr.shards is not None) == sharding
    if ngff == "0.5":
        assert arr.metadata.dimension_names == ("z", "y", "x")
    ms = open_ome_zarr(zarr.open_group(str(out), mode="r")).attributes
    assert "local_mean" in json.dumps(ms.model_dump(mode="json") if hasattr(ms, "model_dump") else str(ms))


def test_bounded_submission_on_a_cluster(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    vol = _sparse(tmp_path / "in.ome.zarr", (16, 128, 128), n_blocks=4, pyramid=False)
    s = RestoreSettings(method="interp", chunks=(16, 16, 16), region=(16, 16, 16), halo=16, in_flight=3,
                        skip_empty=False)
    seen = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        submit = client.submit

        def counting_submit(*a, **k):
            seen.append(sum(1 for f in client.futures.values() if f.status == "pending"))
            return submit(*a, **k)

        monkeypatch.setattr(client, "submit", counting_submit)
        restore(vol, None, tmp_path / "o.ome.zarr", s, client=client, progress=False)
    assert len(seen) == 4 * 8 * 8 and max(seen) <= 3
    restore(vol, None, tmp_path / "local.ome.zarr", s, progress=False)
    np.testing.assert_array_equal(open_volume(tmp_path / "o.ome.zarr").data.compute(),
                                  open_volume(tmp_path / "local.ome.zarr").data.compute())


def test_dry_run_counts_and_writes_nothing(tmp_path):
    vol_path = tmp_path / "in.ome.zarr"
    _sparse(vol_path, (16, 256, 256), n_blocks=2, pyramid=False)
    out = tmp_path / "o.ome.zarr"
    args = ["restore", str(vol_path), str(out), "--method", "interp", "--chunks", "16", "32", "32",
            "--region", "32", "64", "64", "--halo", "16"]
    res = CliRunner().invoke(main, ["-q", *args, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert not out.exists() and "nothing was written" in res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("regions"))
    to_run = int(line.split(",")[-1].split()[0])
    assert "calibration" in res.output and "time" in res.output and "h per TB of input" in res.output
    # the work line: computed voxels over output voxels of the kept regions (interp: the extended crops)
    job = prepare_restore(open_volume(vol_path), None, RestoreSettings(method="interp", chunks=(16, 32, 32),
                                                                       region=(32, 64, 64), halo=16))
    ratio = computed_pixel_ratio(job.plan, job.keep, "volume")
    work = next(ln for ln in res.output.splitlines() if ln.startswith("work"))
    assert float(work.split()[1].rstrip("x")) == pytest.approx(ratio, abs=0.006) and ratio > 1
    res = CliRunner().invoke(main, ["-q", *args, "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert len(list((out / ".ssai3d" / "done").glob("*.json"))) == to_run > 0
    done = zarr.open_group(str(out)).attrs["ssai3d"]["work"]  # and the run's provenance records it
    assert done["computed_pixel_ratio"] == pytest.approx(ratio, abs=1e-3) and done["output_mvoxel_per_s"] > 0


def test_geometry_keeps_physical_extent():
    g = isotropic_geometry((16, 64, 64), (0.4, 0.1, 0.1))
    assert g.z_factor == 4 and g.out_shape == (64, 64, 64) and g.out_voxel_um == (0.1, 0.1, 0.1)
    g = isotropic_geometry((16, 64, 64), (0.05, 0.1, 0.1))  # z finer than x: nothing to interpolate
    assert g.z_factor == 1 and g.out_shape == (16, 64, 64) and g.out_voxel_um == (0.05, 0.1, 0.1)
    g = isotropic_geometry((10, 8, 8), (0.25, 0.1, 0.1))
    assert g.out_shape == (25, 8, 8) and g.out_voxel_um[0] == pytest.approx(0.1)


def test_dz_finer_than_dx_is_written_with_its_own_z_voxel(tmp_path):
    raw = (np.random.default_rng(0).random((32, 48, 48)) * 1000).astype(np.uint16)
    write_multiscale(raw, tmp_path / "fine.ome.zarr", (0.05, 0.1, 0.1), chunks=(16, 48, 48))
    out = tmp_path / "o.ome.zarr"
    restore(open_volume(tmp_path / "fine.ome.zarr"), None, out,
            RestoreSettings(method="interp", chunks=(16, 16, 16), region=(32, 48, 48), halo=16), progress=False)
    got = open_volume(out)
    assert got.voxel_size_um == (0.05, 0.1, 0.1)
    np.testing.assert_array_equal(got.data.compute(), raw)


def test_in_task_pyramid_equals_block_means_of_level0(tmp_path):
    vol = _sparse(tmp_path / "in.ome.zarr", (32, 256, 256), chunks=(8, 64, 64), n_blocks=6, pyramid=False)
    out = tmp_path / "o.ome.zarr"
    restore(vol, None, out, RestoreSettings(method="interp", chunks=(16, 32, 32), region=(64, 128, 128), halo=16),
            progress=False)
    from ssai3d_dask.io.pyramid import downsample_mean

    group = zarr.open_group(str(out))
    above = group["0"][...]
    for level in range(1, len(group)):
        arr = group[str(level)][...]
        step = tuple(a // b for a, b in zip(above.shape, arr.shape))
        np.testing.assert_array_equal(arr, downsample_mean(above, step, above.dtype)[tuple(slice(0, n) for n in arr.shape)])
        above = arr


def test_write_region_levels_rejects_nothing_silently(tmp_path):
    """Writing a region's levels into a layout made for it touches exactly its footprint at every level."""
    w = MultiscaleWriter(tmp_path / "w.ome.zarr", (64, 128, 128), np.uint16, (1, 1, 1), (16, 32, 32),
                         region_shape=(64, 64, 64), shards=(64, 64, 64))
    data = np.full((64, 64, 64), 7, np.uint16)
    write_region_levels(w.path, w.levels, (slice(0, 64), slice(64, 128), slice(0, 64)), data, "r1", {})
    for i, lv in enumerate(w.levels):
        if not lv.in_task:
            break
        arr = zarr.open_array(str(w.path / str(i)))[...]
        box = lv.box((slice(0, 64), slice(64, 128), slice(0, 64)))
        assert (arr[box] == 7).all() and arr.sum() == 7 * arr[box].size
