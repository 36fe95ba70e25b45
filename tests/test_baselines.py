"""Baselines behind the restore interface: Richardson-Lucy and CARE (trained from scratch)."""

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter

from ssai3d_dask.adaptation.care import train_care
from ssai3d_dask.settings import CareSettings
from ssai3d_dask.models.checkpoint import load_network
from ssai3d_dask.models.unet import CareUNet
from ssai3d_dask.cli import main
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.errors import SettingsError
from ssai3d_dask.evaluation.metrics import bead_fwhm, find_beads
from ssai3d_dask.models.nafnet import count_parameters
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.restoration.kernels import restore_in_memory, to_output
from ssai3d_dask.ops.padding import symmetric_pad
from ssai3d_dask.ops.resample import resample_z_block
from ssai3d_dask.restoration.rl import gaussian_psf, gaussian_psf_on_grid, load_psf, richardson_lucy
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume, open_volume


def _beads(shape=(64, 64, 64), n=20, sd=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.zeros(shape, np.float32)
    for _ in range(n):
        t[tuple(rng.integers(20, s - 20) for s in shape)] = 1.0
    return gaussian_filter(t, sd)


def test_rl_matches_scikit_image():
    from skimage.restoration import richardson_lucy as sk_rl

    truth = _beads()
    psf = gaussian_psf((3, 1, 1))
    image = gaussian_filter(truth, (3, 1, 1), truncate=3)
    ours = richardson_lucy(image, psf, 20, start=0.5)  # scikit-image starts from 0.5
    ref = sk_rl(image.astype(np.float64), psf.astype(np.float64), num_iter=20, clip=False)
    assert np.abs(ours - ref).max() < 1e-3 * ref.max()


def test_rl_restores_axial_fwhm_of_beads():
    truth = _beads(sd=1.0, n=12, seed=1)
    psf = gaussian_psf((4, 1, 1))
    image = gaussian_filter(truth, (4, 1, 1), truncate=3)
    out = richardson_lucy(image, psf, 50)
    centres = find_beads(truth)
    fw_true, fw_blur, fw_rl = (bead_fwhm(v, (1, 1, 1), centres)["z"]["mean_um"] for v in (truth, image, out))
    assert fw_blur > 3 * fw_true
    assert abs(fw_rl - fw_true) < 0.35 * (fw_blur - fw_true)  # most of the axial blur is undone


def test_gaussian_psf_on_grid_adds_interpolation_variance():
    _, sds = gaussian_psf_on_grid((0.4, 0.05, 0.05), 0.1, 4.0)
    assert sds[0] == pytest.approx(np.sqrt(16 + 16 / 6))
    assert sds[1] == pytest.approx(0.5)


def test_load_psf(tmp_path):
    psf = np.pad(gaussian_psf((2, 1, 1)), 2) + 0.01
    np.save(tmp_path / "psf.npy", psf)
    got = load_psf(tmp_path / "psf.npy")
    assert got.sum() == pytest.approx(1.0, rel=1e-5) and got.shape == psf.shape
    np.save(tmp_path / "flat.npy", np.ones((5, 5)))
    with pytest.raises(SettingsError, match="must be 3D"):
        load_psf(tmp_path / "flat.npy")
    with pytest.raises(SettingsError, match="does not exist"):
        load_psf(tmp_path / "missing.tif")


def test_rl_blockwise_equals_whole_volume(tmp_path):
    f = 4.0
    sim = simulate("strands", (48, 64, 48), seed=2, model=ForwardModel(0.5, 3.0, z_factor=f))
    vol = Volume.from_array(da.from_array(sim.raw, chunks=(5, 33, 19)), (0.1 * f, 0.1, 0.1))
    s = RestoreSettings(method="rl", chunks=(16, 16, 16), region=(16, 32, 16), psf_sigma_um=(0.3, 0.05, 0.05),
                        rl_iterations=20, dtype="float32")
    restore(vol, None, tmp_path / "rl.ome.zarr", s, progress=False)
    got = open_volume(tmp_path / "rl.ome.zarr").data.compute()
    attrs = zarr.open_group(str(tmp_path / "rl.ome.zarr")).attrs["ssai3d"]
    halo = attrs["settings"]["halo"]
    norm = Normalization.from_dict(attrs["normalization"])
    psf = gaussian_psf_on_grid((0.3, 0.05, 0.05), 0.1, f)[0]
    whole = resample_z_block(norm.apply(sim.raw.astype(np.float32)), 0, slice(0, 48), f)
    ref = richardson_lucy(symmetric_pad(whole, [(halo, halo)] * 3), psf, 20)[halo:-halo, halo:-halo, halo:-halo]
    ref = to_output(ref, norm, np.float32)
    assert np.abs(got - ref).max() < 1e-3 * ref.max()
    interp = restore_in_memory(sim.raw, f, None, Denoiser(), norm, halo)
    assert np.mean((got - sim.truth) ** 2) < np.mean((interp - sim.truth) ** 2)  # noise-free: RL wins


def test_rl_settings_need_a_psf(tmp_path):
    vol = Volume.from_array(np.zeros((8, 32, 32), np.float32), (0.4, 0.1, 0.1))
    with pytest.raises(SettingsError, match="needs the PSF"):
        restore(vol, None, tmp_path / "x.ome.zarr", RestoreSettings(method="rl"), progress=False)
    assert not (tmp_path / "x.ome.zarr").exists()


@pytest.mark.parametrize("depth", [2, 3])
def test_care_unet_reach_is_its_receptive_field(depth):
    torch.manual_seed(0)
    net = CareUNet(8, depth)
    torch.nn.init.normal_(net.out.weight)  # zero-initialised (identity start) would hide the field
    x = torch.randn(1, 1, 160, 160, requires_grad=True)
    net(x)[0, 0, 80, 80].backward()
    support = np.argwhere(x.grad[0, 0].abs().numpy() > 0)
    assert max(80 - support.min(), support.max() - 80) == net.reach_px


def test_care_default_size():
    assert 1_000_000 <= count_parameters(CareUNet()) <= 2_000_000


def _care_volume(f=4.0):
    sim = simulate("strands", (48, 64, 64), seed=3, model=ForwardModel(0.5, 3.0, z_factor=f))
    return sim, Volume.from_array(sim.raw, (0.1 * f, 0.1, 0.1), chunks=(6, 32, 32))


def test_care_trains_and_is_block_invariant(tmp_path):
    sim, vol = _care_volume()
    settings = CareSettings(psf_sigma_um=(0.3, 0.05, 0.05), n_patches=32, patch_px=32, iterations=80, batch_size=8,
                            lr=3e-3, base=4, depth=2)
    adapted = train_care(vol, tmp_path / "care", settings, progress=False)
    hist = adapted.manifest.history
    # before = the identity (zero-initialised output); measured 0.0925 -> 0.0882
    assert hist["val_l1_after"] < 0.97 * hist["val_l1_before"]
    assert adapted.manifest.extra["blur_sigma_px"] == pytest.approx(np.sqrt(9 - 0.25))
    model, manifest = load_network(tmp_path / "care" / "model.pt", expect="care-unet")
    assert manifest["kind"] == "care" and model.reach_px == 22
    outs = []
    for region in [(16, 16, 16), (48, 64, 64)]:
        out = tmp_path / f"c{region[1]}.ome.zarr"
        restore(vol, tmp_path / "care", out, RestoreSettings(method="care", chunks=(16, 16, 16), region=region,
                                                             dtype="float32", skip_empty=False), progress=False)
        outs.append(open_volume(out).data.compute())
    halo = zarr.open_group(str(tmp_path / "c16.ome.zarr")).attrs["ssai3d"]["settings"]["halo"]
    assert halo == 32  # the receptive field (22 px) rounded up to 16
    ref = restore_in_memory(sim.raw, 4.0, model, Denoiser(), adapted.norm, halo)
    scale = ref.max() - ref.min()
    assert np.abs(outs[0] - outs[1]).max() < 1e-4 * scale
    assert np.abs(outs[0] - ref).max() < 1e-4 * scale


def test_care_rejects_psf_narrower_than_lateral():
    _, vol = _care_volume()
    with pytest.raises(SettingsError, match="not larger than the lateral"):
        CareSettings(psf_sigma_um=(0.05, 0.1, 0.1)).blur_sigma_px(vol)


def test_cli_method_model_mismatch(tmp_path):
    sim, vol = _care_volume()
    from ssai3d_dask.evaluation.simio import write_simulation

    write_simulation(sim, tmp_path / "ph", dtype="float32", chunks=(16, 64, 64))
    raw = str(tmp_path / "ph" / "raw.ome.zarr")
    r = CliRunner().invoke(main, ["-q", "train-care", raw, str(tmp_path / "care"), "--psf-sigma-um",
                                  "0.3", "0.05", "0.05", "--iterations", "2", "--n-patches", "8", "--patch-px", "32"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["restore", raw, str(tmp_path / "o.ome.zarr"), "--model", str(tmp_path / "care")])
    assert r.exit_code == 2 and "use --method care" in r.output
    r = CliRunner().invoke(main, ["restore", raw, str(tmp_path / "o.ome.zarr"), "--method", "interp",
                                  "--psf-sigma-um", "1", "1", "1"])
    assert r.exit_code == 2 and "for --method rl" in r.output
    assert not (tmp_path / "o.ome.zarr").exists()
