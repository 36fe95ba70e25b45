"""Phantoms and the forward model: determinism, geometry, blur widths, sampling, noise."""

import numpy as np
import pytest

from ssai3d_dask.evaluation.metrics import FWHM_PER_SD, bead_fwhm, find_beads
from ssai3d_dask.evaluation.simulate import ForwardModel, PHANTOMS, simulate
from ssai3d_dask.ops.resample import subsample_z


@pytest.mark.parametrize("kind", sorted(PHANTOMS))
def test_deterministic_by_seed(kind):
    a = simulate(kind, (24, 40, 40), seed=3)
    b = simulate(kind, (24, 40, 40), seed=3)
    c = simulate(kind, (24, 40, 40), seed=4)
    np.testing.assert_array_equal(a.truth, b.truth)
    np.testing.assert_array_equal(a.raw, b.raw)
    assert not np.array_equal(a.truth, c.truth)
    assert a.truth.dtype == np.float32 and a.truth.max() > 0


def test_beads_blur_matches_psf():
    sim = simulate("beads", (96, 96, 96), seed=0)
    pos = find_beads(sim.truth)
    assert len(pos) >= 30
    fw = bead_fwhm(sim.raw, (1, 1, 1), positions=pos)
    m = sim.model
    expect_z = FWHM_PER_SD * np.hypot(2.0, m.sigma_axial_px)
    expect_x = FWHM_PER_SD * np.hypot(2.0, m.sigma_lateral_px)
    assert fw["z"]["mean_um"] == pytest.approx(expect_z, rel=0.05)
    assert fw["x"]["mean_um"] == pytest.approx(expect_x, rel=0.05)


def test_strands_are_flat_axially():
    from scipy import ndimage

    t = simulate("strands", (64, 96, 96), seed=1, n_strands=5).truth > 0.5
    labels, n = ndimage.label(t, structure=np.ones((3, 3, 3)))
    assert n >= 3
    ext = np.array([[s.stop - s.start for s in obj] for obj in ndimage.find_objects(labels)])
    assert np.median(ext[:, 0]) <= 5  # 1-4 px thick in z
    assert np.median(ext[:, 1:].max(axis=1)) >= 30  # long curves laterally


def test_cylinders_are_discs_laterally_and_bars_axially():
    t = simulate("cylinders", (48, 64, 64), seed=2).truth > 0
    # along z a cylinder is a long run; along x it is at most a diameter (16 px)
    zrun = t.sum(axis=0).max()
    assert zrun >= 0.2 * 48
    assert t.any(axis=0).sum() > 0


def test_undersampling_integer_and_fractional():
    vol = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    np.testing.assert_array_equal(subsample_z(vol, 3)[:, 0, 0], [0, 3, 6, 9])
    np.testing.assert_allclose(subsample_z(vol, 2.5)[:, 0, 0], [0, 2.5, 5, 7.5, 10])
    sim = simulate("spheres", (40, 32, 32), model=ForwardModel(0.5, 2.0, z_factor=4))
    assert sim.raw.shape == (10, 32, 32)
    assert sim.raw_voxel_size_um == (0.4, 0.1, 0.1)


def test_noise_level_follows_photons():
    quiet = simulate("spheres", (32, 32, 32), seed=0, model=ForwardModel(0.5, 2.0, photons=10000))
    loud = simulate("spheres", (32, 32, 32), seed=0, model=ForwardModel(0.5, 2.0, photons=20))
    clean = simulate("spheres", (32, 32, 32), seed=0, model=ForwardModel(0.5, 2.0))
    e_quiet = np.std(quiet.raw - clean.raw)
    e_loud = np.std(loud.raw - clean.raw)
    # Poisson noise sd scales as 1/sqrt(photons): 10000/20 = 500 -> ~22x
    assert 12 < e_loud / e_quiet < 35


def test_shift_variant_psf_varies_across_x():
    model = ForwardModel(0.5, 3.0, shift_variant=True)
    sim = simulate("beads", (64, 64, 128), seed=5, model=model, n_beads=60)
    pos = find_beads(sim.truth)
    left = pos[pos[:, 2] < 40]
    right = pos[pos[:, 2] > 88]
    fl = bead_fwhm(sim.raw, (1, 1, 1), positions=left)["z"]["mean_um"]
    fr = bead_fwhm(sim.raw, (1, 1, 1), positions=right)["z"]["mean_um"]
    assert fr > 1.2 * fl


def test_bad_kind_and_shape():
    with pytest.raises(ValueError, match="unknown phantom"):
        simulate("cubes")
    with pytest.raises(ValueError, match="shape"):
        simulate("beads", (4, 64, 64))


def test_tissue_has_textured_nuclei_and_neurites_of_every_orientation():
    from scipy import ndimage

    t = simulate("tissue", (48, 96, 96), seed=2).truth
    nuclei, neurites = (t > 0.1) & (t < 0.55), t > 0.6
    assert 0.04 < nuclei.mean() < 0.3 and 0.002 < neurites.mean() < 0.1
    assert np.std(t[nuclei]) > 0.04  # textured, not flat discs
    labels, n = ndimage.label(neurites, structure=np.ones((3, 3, 3)))
    z_extent = [s[0].stop - s[0].start for s in ndimage.find_objects(labels)]
    assert n >= 3 and max(z_extent) >= 16  # some neurites run through z, unlike the flat strands
