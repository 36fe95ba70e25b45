"""Restoration: plan coverage, kernels, block-size invariance, seams, resume after SIGKILL, worker loss."""

import os
import signal
import subprocess
import sys
import time

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings, strategies as st

from ssai3d_dask.models.folder import AdaptedModel
from ssai3d_dask.models.precision import prepare
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import ClusterSettings, RestoreSettings
from ssai3d_dask.restoration.plan import make_plan
from ssai3d_dask.restoration.kernels import restore_in_memory
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume, open_volume

NORM = Normalization(0.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(z=st.integers(2, 40), y=st.integers(8, 90), x=st.integers(8, 90), f=st.floats(1.0, 5.0),
       rz=st.sampled_from([16, 32, 48]), ry=st.sampled_from([16, 32]), rx=st.sampled_from([16, 48]))
def test_plan_tiles_output_exactly_once(z, y, x, f, rz, ry, rx):
    plan = make_plan((z, y, x), f, (16, 16, 16), (rz, ry, rx), (16, 16, 16))
    cover = np.zeros(plan.out_shape, np.int32)
    for r in plan:
        cover[r.core] += 1
        crop = plan.input_crop(r)
        assert 0 <= crop[0].start < crop[0].stop <= z
        # every output plane of the core (and its clipped halo) interpolates between planes inside the crop
        lo = max(r.core[0].start - 16, 0) / f
        hi = (min(r.core[0].stop + 16, plan.out_shape[0]) - 1) / f
        assert crop[0].start <= np.floor(lo) and min(np.floor(hi) + 1, z - 1) < crop[0].stop
    assert cover.min() == 1 and cover.max() == 1
    assert plan.out_shape == (int(round(z * f)), y, x)


def test_plan_rejects_misaligned_sizes():
    with pytest.raises(ValueError, match="multiples of 16"):
        make_plan((10, 64, 64), 2.0, (20, 64, 64), (40, 64, 64), (16, 16, 16))
    with pytest.raises(ValueError, match="whole number of chunks"):
        make_plan((30, 64, 64), 2.0, (32, 32, 32), (48, 64, 64), (16, 16, 16))


def _phantom(shape=(48, 80, 72), z_factor=4, seed=0, **kw):
    sim = simulate("strands", shape, seed=seed, model=ForwardModel(0.5, 3.0, z_factor=z_factor, **kw))
    return sim


@pytest.mark.parametrize("z_factor", [4, 2.5])
def test_interp_blockwise_equals_whole(tmp_path, z_factor):
    sim = _phantom(z_factor=z_factor)
    vol = Volume.from_array(da.from_array(sim.raw, chunks=(5, 33, 19)), (0.1 * z_factor, 0.1, 0.1))
    restore(vol, None, tmp_path / "i.ome.zarr", RestoreSettings(method="interp", chunks=(16, 16, 16),
                                                                region=(16, 32, 16), halo=16), progress=False)
    got = open_volume(tmp_path / "i.ome.zarr").data.compute()
    norm = Normalization.from_dict(zarr.open_group(str(tmp_path / "i.ome.zarr")).attrs["ssai3d"]["normalization"])
    ref = restore_in_memory(sim.raw, z_factor, None, Denoiser(), norm, 16)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert open_volume(tmp_path / "i.ome.zarr").voxel_size_um == (0.1, 0.1, 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("denoise_h", [None, 0.05])
def test_model_result_does_not_depend_on_block_size(tmp_path, model_dir_factory, denoise_h):
    sim = _phantom(shape=(16, 48, 40), photons=200 if denoise_h else None)
    vol = Volume.from_array(sim.raw, (0.4, 0.1, 0.1), chunks=(3, 20, 30))
    mdir = model_dir_factory(4.0, denoise_h=denoise_h)
    outs = []
    for region in [(16, 16, 16), (16, 48, 48)]:
        out = tmp_path / f"r{region[1]}.ome.zarr"
        restore(vol, mdir, out, RestoreSettings(chunks=(16, 16, 16), region=region, halo=48, dtype="float32",
                                                skip_empty=False), progress=False)
        outs.append(open_volume(out).data.compute())
    adapted = AdaptedModel.load(mdir)
    ref = restore_in_memory(sim.raw, 4.0, adapted.model, adapted.denoiser, adapted.norm, 48)
    scale = float(ref.max() - ref.min())
    # Stated tolerance: 1e-3 of the output's range, everywhere (not only the interior).
    assert np.abs(outs[0] - outs[1]).max() <= 1e-3 * scale
    assert np.abs(outs[0] - ref).max() <= 1e-3 * scale


@pytest.mark.slow
def test_no_seams_at_block_borders(tmp_path, model_dir_factory):
    z, y, x = np.mgrid[0:8, 0:48, 0:48].astype(np.float32)
    raw = 0.3 + 0.2 * np.sin(y / 7.0) * np.cos(x / 9.0) + 0.05 * z  # smooth structure crossing every border
    vol = Volume.from_array(raw, (0.4, 0.1, 0.1))
    out = tmp_path / "s.ome.zarr"
    restore(vol, model_dir_factory(4.0), out, RestoreSettings(chunks=(16, 16, 16), region=(16, 16, 16), halo=48,
                                                              dtype="float32", skip_empty=False), progress=False)
    v = open_volume(out).data.compute()
    for axis in range(3):
        d = np.abs(np.diff(v, axis=axis))
        border = np.take(d, [i - 1 for i in range(16, v.shape[axis], 16)], axis=axis)
        inner = np.take(d, [i for i in range(v.shape[axis] - 1) if (i + 1) % 16], axis=axis)
        assert border.mean() <= 1.5 * inner.mean() + 1e-6
        assert border.max() <= 1.5 * inner.max() + 1e-6


def _restore_cmd(src, mdir, out, *extra):
    return [sys.executable, "-m", "ssai3d_dask.cli", "-q", "restore", str(src), str(out), "--model", str(mdir),
            "--chunks", "16", "16", "16", "--region", "16", "16", "16", "--halo", "16", "--workers", "1",
            "--no-skip-empty", *extra]


def _level0_bytes(path):
    arr = zarr.open_array(str(path / "0"), mode="r")
    return arr[...].tobytes()


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_bytes(tmp_path, model_dir_factory):
    from ssai3d_dask.io.omezarr import write_multiscale

    sim = _phantom(shape=(32, 32, 48))
    src = tmp_path / "raw.ome.zarr"
    write_multiscale((sim.raw * 60000).astype(np.uint16), src, (0.4, 0.1, 0.1), (8, 32, 32))
    mdir = model_dir_factory(4.0, high=60000.0)
    full = tmp_path / "full.ome.zarr"
    subprocess.run(_restore_cmd(src, mdir, full), check=True, capture_output=True)
    cut = tmp_path / "cut.ome.zarr"
    proc = subprocess.Popen(_restore_cmd(src, mdir, cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    done = cut / ".ssai3d" / "done"
    deadline = time.time() + 300
    while time.time() < deadline and (not done.exists() or len(list(done.glob("*.json"))) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its LocalCluster workers, mid-run
    proc.wait()
    n_done = len(list(done.glob("*.json")))
    assert 3 <= n_done < 2 * 2 * 3
    res = subprocess.run(_restore_cmd(src, mdir, cut, "--resume"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert _level0_bytes(cut) == _level0_bytes(full)
    assert len(list(done.glob("*.json"))) == 12


@pytest.mark.slow
def test_worker_killed_mid_run_completes_identically(tmp_path, model_dir_factory):
    import threading

    from distributed import Client, LocalCluster

    sim = _phantom(shape=(32, 32, 48))
    vol = Volume.from_array(sim.raw, (0.4, 0.1, 0.1), chunks=(4, 32, 32))
    mdir = model_dir_factory(4.0)
    s = RestoreSettings(chunks=(16, 16, 16), region=(16, 16, 16), halo=16, dtype="float32", skip_empty=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        restore(vol, mdir, tmp_path / "ref.ome.zarr", s, client=client, progress=False)  # same workers, no kill
        out = tmp_path / "k.ome.zarr"
        done = out / ".ssai3d" / "done"
        killed = []

        def killer():
            while not done.exists() or not list(done.glob("*.json")):
                time.sleep(0.02)
            pid = list(client.run(os.getpid).values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        restore(vol, mdir, out, s, client=client, progress=False)
        th.join(timeout=60)
    assert killed
    np.testing.assert_array_equal(open_volume(out).data.compute(), open_volume(tmp_path / "ref.ome.zarr").data.compute())


def test_tiff_input_restores_on_a_distributed_cluster(tmp_path):
    """The TIFF reader must ship to workers (tifffile's zarr store holds an open file and cannot)."""
    import tifffile
    from distributed import Client, LocalCluster

    sim = _phantom(shape=(32, 48, 48))
    raw = (sim.raw * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "raw.tif", raw, imagej=True, resolution=(10, 10),
                     metadata={"spacing": 0.4, "unit": "um", "axes": "ZYX"})
    vol = open_volume(tmp_path / "raw.tif")
    s = RestoreSettings(method="interp", chunks=(16, 16, 16), region=(16, 48, 48), halo=16)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        restore(vol, None, tmp_path / "t.ome.zarr", s, client=client, progress=False)
    restore(Volume.from_array(raw, (0.4, 0.1, 0.1)), None, tmp_path / "n.ome.zarr", s, progress=False)
    np.testing.assert_array_equal(open_volume(tmp_path / "t.ome.zarr").data.compute(),
                                  open_volume(tmp_path / "n.ome.zarr").data.compute())


def _bf16_blockwise_vs_whole(tmp_path, mdir, device):
    sim = _phantom(shape=(32, 32, 32))
    vol = Volume.from_array(sim.raw, (0.4, 0.1, 0.1), chunks=(3, 20, 30))
    out = tmp_path / f"bf16-{device}.ome.zarr"
    restore(vol, mdir, out, RestoreSettings(chunks=(16, 16, 16), region=(16, 16, 16), halo=48, dtype="float32",
                                            skip_empty=False, precision="bf16", device=device), progress=False)
    got = open_volume(out).data.compute()
    adapted = AdaptedModel.load(mdir)
    prepare(adapted.model, device)
    ref = restore_in_memory(sim.raw, 4.0, adapted.model, adapted.denoiser, adapted.norm, 48, precision="bf16",
                            device=device)
    f32 = restore_in_memory(sim.raw, 4.0, adapted.model, adapted.denoiser, adapted.norm, 48, device=device)
    scale = float(ref.max() - ref.min())
    attrs = zarr.open_group(str(out)).attrs["ssai3d"]
    assert attrs["precision"] == {"requested": "bf16", "used_this_run": ["bf16"], "compiled": False}
    return np.abs(got - ref).max() / scale, np.abs(ref - f32).max() / scale


def test_bf16_result_does_not_depend_on_block_size(tmp_path, model_dir_factory):
    """bf16 rounds each activation to 8 bits of mantissa (relative step 2**-8 = 3.9e-3). Tiles and the whole
    volume do the same arithmetic per pixel, but the convolutions' accumulation order depends on the tile's
    size, and a last-bit fp32 difference can flip a bf16 rounding, which the following layers carry on.
    Measured on an AVX2 CPU (emulated bf16): 2.4e-3 of the output range between tiles and the whole
    volume, against 6e-3 between bf16 and fp32. The stated tolerance, 1e-2 of the range, is 2.5 bf16 steps:
    a seam or a wrong halo in bf16 would show as differences of the size of the signal (> 0.1)."""
    tiles_vs_whole, bf16_vs_fp32 = _bf16_blockwise_vs_whole(tmp_path, model_dir_factory(4.0), "cpu")
    print(f"bf16: tiles vs whole {tiles_vs_whole:.2e}, bf16 vs fp32 {bf16_vs_fp32:.2e} of the range")
    assert tiles_vs_whole <= 1e-2
    assert bf16_vs_fp32 <= 3e-2  # bf16 is an approximation of the fp32 result, not another result


@pytest.mark.gpu
def test_bf16_on_cuda_does_not_depend_on_block_size(tmp_path, model_dir_factory):
    tiles_vs_whole, bf16_vs_fp32 = _bf16_blockwise_vs_whole(tmp_path, model_dir_factory(4.0), "cuda")
    print(f"cuda bf16: tiles vs whole {tiles_vs_whole:.2e}, bf16 vs fp32 {bf16_vs_fp32:.2e} of the range")
    assert tiles_vs_whole <= 1e-2 and bf16_vs_fp32 <= 3e-2


def _restore_variants(tmp_path, model_dir_factory, variants: dict[str, dict]) -> list[np.ndarray]:
    """The same small phantom restored once per named variant of the settings (one region, halo 48)."""
    sim = _phantom(shape=(16, 48, 40))
    vol = Volume.from_array(sim.raw, (0.4, 0.1, 0.1))
    mdir = model_dir_factory(4.0)
    outs = []
    for name, kw in variants.items():
        out = tmp_path / f"{name}.ome.zarr"
        restore(vol, mdir, out, RestoreSettings(chunks=(16, 16, 16), region=(16, 48, 48), halo=48, dtype="float32",
                                                skip_empty=False, **kw), progress=False)
        outs.append(open_volume(out).data.compute())
    return outs


@pytest.mark.gpu
def test_cuda_fp32_equals_cpu_fp32(tmp_path, model_dir_factory):
    cpu, cuda = _restore_variants(tmp_path, model_dir_factory, {d: {"precision": "fp32", "device": d}
                                                                for d in ("cpu", "cuda")})
    # cuDNN convolutions use TF32 (10-bit mantissa) by default (torch.backends.cudnn.allow_tf32), hence a
    # tolerance of 1e-3 of the range rather than fp32 rounding.
    assert np.abs(cpu - cuda).max() <= 1e-3 * float(cpu.max() - cpu.min())


@pytest.mark.gpu
def test_compiled_network_on_cuda_equals_eager(tmp_path, model_dir_factory):
    eager, compiled = _restore_variants(tmp_path, model_dir_factory,
                                        {m: {"precision": "bf16", "device": "cuda", "compile": m} for m in ("off", "on")})
    # Inductor fuses and reorders the bf16 arithmetic: the bf16 tolerance of the block-invariance test.
    assert np.abs(eager - compiled).max() <= 1e-2 * float(eager.max() - eager.min())


def test_closing_the_cli_client_stops_the_local_cluster_it_started():
    """`ssai3d restore` in-process (notebooks, CliRunner) must not leave worker processes behind: Client.close
    alone leaves the LocalCluster running, and leaked clusters piled up in the test process."""
    import psutil
    from ssai3d_dask.cli.restore import _client

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with _client(ClusterSettings(workers=2, threads_per_worker=1), "interp") as client:
        assert len(client.scheduler_info()["workers"]) == 2
        started = {p.pid for p in me.children(recursive=True)} - before
        assert started  # processes=True: the workers are child processes
    gone = psutil.wait_procs([psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=10)[1]
    alive = [p for p in gone if p.is_running() and "resource_tracker" not in " ".join(p.cmdline())]
    assert not alive, f"worker processes left running: {[p.pid for p in alive]}"
