"""Nothing invented: the axial check's measure, and adapted models on stacks whose truth is known to hold no
structure along z (issue 42)."""

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.adaptation.axial_check import LIMIT
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.models.folder import AdaptedModel
from ssai3d_dask.ops.spectrum import axial_excess, high_band_power
from ssai3d_dask.restoration.kernels import restore_in_memory
from ssai3d_dask.settings import AdaptSettings, FinetuneSettings


def test_high_band_power_of_white_noise_and_of_a_smooth_volume(rng):
    noise = rng.normal(size=(16, 32, 256))
    # white noise of variance 1: flat spectrum, so periods under 4 px (f in [1/4, 1/2]) carry half of it
    assert high_band_power(noise, -1) == pytest.approx(0.5, abs=0.03)
    assert high_band_power(gaussian_filter(noise, 3.0), -1) < 1e-4
    assert high_band_power(7.0 + 3.0 * noise, -1) == pytest.approx(9 * high_band_power(noise, -1))
    assert high_band_power(np.repeat(noise[:1], 16, axis=0), 0) < 1e-30  # constant along the axis


def test_axial_excess_is_one_for_isotropic_structure_and_flags_texture_along_z(rng):
    truth = gaussian_filter(rng.normal(size=(96, 96, 96)), 1.2)  # isotropic structure, fine but resolved
    lateral = truth[::3]  # the stack's own planes
    assert axial_excess(truth, lateral)["z"] == pytest.approx(1.0, abs=0.1)
    # interpolation of every 3rd plane: less detail along z than laterally
    interp = np.repeat(gaussian_filter(truth, (3, 0, 0))[::3], 3, axis=0)
    assert axial_excess(gaussian_filter(interp, (1, 0, 0)), lateral)["z"] < 0.5
    # a hatched texture along z (period 2 planes) at a fifth of the structure's sd: flagged
    hatched = truth + 0.2 * truth.std() * (-1.0) ** np.arange(96)[:, None, None]
    assert axial_excess(hatched, lateral)["z"] > LIMIT
    assert axial_excess(hatched, lateral)["lateral"] == pytest.approx(1.0, abs=0.1)


def _adapted(vol: Volume, path, iterations: int = 60) -> AdaptedModel:
    s = AdaptSettings(n_patches=24, patch_px=64, finetune=FinetuneSettings(iterations=iterations, batch_size=4))
    adapt(vol, path, s, progress=False)
    return AdaptedModel.load(path)


@pytest.mark.slow
def test_pure_noise_restores_to_no_structure(tmp_path, rng):
    """Poisson noise around one level: the truth is that level everywhere. The restoration holds no more
    structure: the noise is removed to under a tenth of its sd, as by interpolation of the same denoised
    stack (measured: 0.54 vs 0.48 of a raw sd of 6.3), no pattern is put along z, and the adaptation's axial
    check trusts it."""
    raw = rng.poisson(40.0, size=(24, 96, 96)).astype(np.float32)
    vol = Volume.from_array(raw, (3.0, 1.0, 1.0), chunks=(8, 48, 48))
    m = _adapted(vol, tmp_path / "m")
    interp = restore_in_memory(raw, 3.0, None, m.denoiser, m.norm, 16)
    out = restore_in_memory(raw, 3.0, m.model, m.denoiser, m.norm, 16)
    assert out.std() < 0.1 * raw.std() and interp.std() < 0.1 * raw.std()
    assert axial_excess(out, interp)["z"] < LIMIT  # no more fine detail along z than interpolation shows
    assert abs(float(out.mean()) - 40.0) < 0.05 * 40.0
    check = json.loads((tmp_path / "m" / "manifest.json").read_text())["axial_check"]
    assert check["trusted"] and check["z_over_lateral"] <= LIMIT
    assert (tmp_path / "m" / "axial_check.png").stat().st_size > 1000


@pytest.mark.slow
def test_structure_constant_along_z_gets_no_z_structure_beyond_the_networks_grid_pattern(tmp_path, rng):
    """Lateral structure extruded along z: every XZ/YZ slice is constant along z, so is the truth.

    A network with strided down-sampling is not shift-equivariant and writes a pattern along z locked to
    its 16-px grid (measured here: an rms of 4.9 % of the lateral structure's sd, of which interpolation
    writes none). This bounds it, and asserts that the adaptation's axial check reports it: a stack with
    no z detail gives the check no room, so the model is not trusted there."""
    plane = gaussian_filter(rng.normal(size=(96, 96)), 2.0)
    plane = 100 + 400 * (plane - plane.min()) / np.ptp(plane)
    raw = np.repeat(plane[None], 24, axis=0).astype(np.float32)
    vol = Volume.from_array(raw, (3.0, 1.0, 1.0), chunks=(8, 48, 48))
    m = _adapted(vol, tmp_path / "m")
    out = restore_in_memory(raw, 3.0, m.model, m.denoiser, m.norm, 32)
    core = out[8:-8, 8:-8, 8:-8]
    assert core.std(axis=0).mean() < 0.06 * plane.std()
    assert np.corrcoef(core.mean(axis=0).ravel(), plane[8:-8, 8:-8].ravel())[0, 1] > 0.95  # the plane survives
    assert not json.loads((tmp_path / "m" / "manifest.json").read_text())["axial_check"]["trusted"]


@pytest.mark.slow
def test_a_single_textured_plane_is_not_spread_along_z(tmp_path, rng):
    """Structure in one lateral plane of the stack and nowhere else: the truth has nothing along z beyond
    the plane's blur, and the restoration must not ring or copy the texture there."""
    raw = np.full((24, 96, 96), 100.0, np.float32)
    texture = gaussian_filter(rng.normal(size=(96, 96)), 1.5)
    raw[12] += 400 * (texture - texture.min()) / np.ptp(texture)
    vol = Volume.from_array(raw, (3.0, 1.0, 1.0), chunks=(8, 48, 48))
    m = _adapted(vol, tmp_path / "m")
    out = restore_in_memory(raw, 3.0, m.model, m.denoiser, m.norm, 32) - 100.0
    interp = restore_in_memory(raw, 3.0, None, m.denoiser, m.norm, 32) - 100.0
    sheet = 36  # raw plane 12 at z step 3
    far = np.r_[0:sheet - 9, sheet + 10:out.shape[0]]  # further than 3 raw planes from the sheet
    energy = lambda a, zs: float(np.mean(a[zs, 8:-8, 8:-8] ** 2))  # noqa: E731
    assert energy(interp, far) < 1e-6 * energy(interp, [sheet])
    assert energy(out, far) < 1e-3 * energy(out, [sheet]), (energy(out, far), energy(out, [sheet]))
