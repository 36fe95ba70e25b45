"""OT-CycleGAN baseline: the generator's reach is the halo, training learns, restore and resume behave."""

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from ssai3d_dask.adaptation import cyclegan as cg
from ssai3d_dask.adaptation.cyclegan import CycleGAN, sample_subvolumes, slices_through, train_cyclegan
from ssai3d_dask.adaptation.sampling import volume_statistics
from ssai3d_dask.cli import main
from ssai3d_dask.errors import SettingsError
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume, open_volume
from ssai3d_dask.models.checkpoint import load_network
from ssai3d_dask.models.nafnet import count_parameters
from ssai3d_dask.models.unet import UNet3D
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.restoration.kernels import restore_in_memory, run_volume
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import CycleGANSettings, RestoreSettings

FAST = dict(volume_px=16, n_volumes=12, batch_size=2, slices=4)


def _phantom(f=4):
    sim = simulate("tubes", (32, 64, 64), seed=5, model=ForwardModel(0.5, 3.0, z_factor=f))
    return sim, Volume.from_array(sim.raw, (0.1 * f, 0.1, 0.1), chunks=(4, 32, 32))


def test_generator_reach_is_its_receptive_field():
    torch.manual_seed(0)
    net = UNet3D(4, 2)
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(1, 1, 64, 64, 64, requires_grad=True)
    net(x)[0, 0, 32, 32, 32].backward()
    support = np.argwhere(x.grad[0, 0].abs().numpy() > 0)
    assert max((32 - support.min(0)).max(), (support.max(0) - 32).max()) == net.reach_px


def test_default_sizes():
    nets = CycleGAN.build("small", 0).parameters()
    assert 300_000 <= sum(nets.values()) <= 2_000_000
    assert 2_000_000 <= count_parameters(CycleGAN.build("paper", 0).G)  # the GPU preset is paper-like


def test_run_volume_does_not_depend_on_the_tile():
    torch.manual_seed(1)
    net = UNet3D(4, 2).eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)
    ext = np.random.default_rng(0).random((56, 64, 72), dtype=np.float32)
    core_off, core = (24, 24, 24), (8, 16, 24)
    with torch.no_grad():
        whole = net(torch.from_numpy(ext)[None, None])[0, 0].numpy()
    want = whole[24:32, 24:40, 24:48]
    for tile in (8, 12, 64):
        got = run_volume(net, ext, core_off, core, torch.device("cpu"), tile=tile)
        assert np.abs(got - want).max() < 1e-5, tile


def test_subvolumes_are_the_pipelines_isotropic_grid():
    sim, vol = _phantom()
    norm = volume_statistics(vol, 0)
    subs = sample_subvolumes(vol, 6, 16, norm, seed=3)
    from ssai3d_dask.ops.resample import resample_z_block

    full = resample_z_block(norm.apply(sim.raw.astype(np.float32)), 0, slice(0, 128), 4.0)
    for v, (z, y, x) in zip(subs.volumes, subs.origins):
        np.testing.assert_allclose(v, np.clip(full[z:z + 16, y:y + 16, x:x + 16], -0.5, 2.0), atol=1e-6)


def test_slices_through_and_mips():
    v = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 1, 4, 5, 6)
    rng = np.random.default_rng(0)
    assert slices_through(v, 2, 3, 1, rng).shape == (6, 1, 5, 6)  # lateral planes
    assert slices_through(v, 3, 2, 1, rng).shape == (4, 1, 4, 6)  # XZ, z along rows
    mip = slices_through(v, 4, 1, 6, rng)  # a MIP over the whole x extent
    assert torch.equal(mip, v[..., -1])


def test_training_learns_and_restore_is_block_invariant(tmp_path):
    sim, vol = _phantom()
    s = CycleGANSettings(iterations=60, lr=1e-3, **FAST)
    adapted = train_cyclegan(vol, tmp_path / "cg", s, progress=False)
    val = adapted.manifest.history["validation"]
    # The near-identity start has a small cycle error, training lowers it; D_Y learns to tell G's axial
    # slices from the stack's lateral ones (0.5 = chance). Measured: cycle 0.0018 -> 0.00005, accuracy 0.50 -> 0.64.
    assert val[-1]["cycle"] < 0.5 * val[0]["cycle"]
    assert val[0]["d_y_accuracy"] == pytest.approx(0.5, abs=0.05)
    assert val[-1]["d_y_accuracy"] > 0.58
    assert not (tmp_path / "cg" / cg.RESUME_FILE).exists()
    model, manifest = load_network(tmp_path / "cg" / "model.pt", expect="cyclegan-generator")
    assert manifest["kind"] == "cyclegan" and model.reach_px == 22

    outs = []
    for region in [(16, 16, 16), (32, 64, 64)]:
        out = tmp_path / f"c{region[1]}.ome.zarr"
        restore(vol, tmp_path / "cg", out, RestoreSettings(method="cyclegan", chunks=(16, 16, 16), region=region,
                                                           dtype="float32", skip_empty=False), progress=False)
        outs.append(open_volume(out).data.compute())
    from ome_zarr_models import open_ome_zarr

    group = zarr.open_group(str(tmp_path / "c16.ome.zarr"), mode="r")
    open_ome_zarr(group)  # a valid multiscale OME-Zarr
    assert len(group.attrs["ome"]["multiscales"][0]["datasets"]) >= 2
    assert group.attrs["ssai3d"]["settings"]["halo"] == 32  # the receptive field (22 px) rounded up to 16
    ref = restore_in_memory(sim.raw, 4.0, model, Denoiser(), adapted.norm, 32)
    scale = ref.max() - ref.min()
    assert np.abs(outs[0] - outs[1]).max() < 1e-4 * scale
    assert np.abs(outs[0] - ref).max() < 1e-4 * scale


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    _, vol = _phantom()
    s = CycleGANSettings(iterations=6, checkpoint_every=2, **FAST)
    whole = train_cyclegan(vol, tmp_path / "a", s, progress=False).model.state_dict()

    real_step, calls = cg._Trainer.step, {"n": 0}

    def dying_step(self, *a):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, *a)

    monkeypatch.setattr(cg._Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_cyclegan(vol, tmp_path / "b", s, progress=False)
    assert (tmp_path / "b" / cg.RESUME_FILE).exists() and not (tmp_path / "b" / "manifest.json").exists()
    monkeypatch.setattr(cg._Trainer, "step", real_step)
    with pytest.raises(SettingsError, match="other settings"):
        train_cyclegan(vol, tmp_path / "b", s.model_copy(update={"lr": 1e-3}), progress=False)
    resumed = train_cyclegan(vol, tmp_path / "b", s, progress=False)
    for k, v in whole.items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_cli_train_restore_and_mismatched_folders(tmp_path):
    sim, vol = _phantom()
    from ssai3d_dask.evaluation.simio import write_simulation

    write_simulation(sim, tmp_path / "ph", dtype="float32", chunks=(16, 64, 64))
    raw = str(tmp_path / "ph" / "raw.ome.zarr")
    r = CliRunner().invoke(main, ["-q", "train-cyclegan", raw, str(tmp_path / "cg"), "--iterations", "2",
                                  "--volume-px", "16", "--n-volumes", "8", "--slices", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["restore", raw, str(tmp_path / "o.ome.zarr"), "--model", str(tmp_path / "cg")])
    assert r.exit_code == 2 and "use --method cyclegan" in r.output
    r = CliRunner().invoke(main, ["restore", raw, str(tmp_path / "o.ome.zarr"), "--method", "care",
                                  "--model", str(tmp_path / "cg")])
    assert r.exit_code == 2 and "use --method cyclegan" in r.output
    r = CliRunner().invoke(main, ["restore", raw, str(tmp_path / "o.ome.zarr"), "--method", "cyclegan"])
    assert r.exit_code == 2 and "ssai3d train-cyclegan" in r.output
    r = CliRunner().invoke(main, ["restore", raw, str(tmp_path / "o.ome.zarr"), "--method", "cyclegan",
                                  "--model", str(tmp_path / "cg"), "--view", "xz"])
    assert r.exit_code == 2 and "--view" in r.output
    r = CliRunner().invoke(main, ["train-cyclegan", raw, str(tmp_path / "cg"), "--volume-px", "18"])
    assert r.exit_code == 2 and "multiple of 4" in r.output
    r = CliRunner().invoke(main, ["train-cyclegan", raw, str(tmp_path / "cg"), "--iterations", "2",
                                  "--volume-px", "16"])
    assert r.exit_code == 2 and "--overwrite" in r.output  # a finished model folder is not silently replaced
    assert not (tmp_path / "o.ome.zarr").exists()
    r = CliRunner().invoke(main, ["-q", "restore", raw, str(tmp_path / "o.ome.zarr"), "--method", "cyclegan",
                                  "--model", str(tmp_path / "cg"), "--chunks", "16", "32", "32"])
    assert r.exit_code == 0, r.output
    assert open_volume(tmp_path / "o.ome.zarr").shape == sim.truth.shape == (32, 64, 64)
