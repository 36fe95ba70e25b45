"""Metrics on cases with known answers, in memory and blockwise."""

import math

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from ssai3d_dask.evaluation import metrics as M


def test_psnr_known_value(rng):
    t = rng.random((16, 20, 24))
    p = t + 0.1 * np.sign(rng.standard_normal(t.shape))  # |error| = 0.1 everywhere
    assert M.mse(p, t) == pytest.approx(0.01)
    assert M.psnr(p, t, data_range=1.0) == pytest.approx(20.0)
    assert M.psnr(da.from_array(p, chunks=7), da.from_array(t, chunks=5), 1.0) == pytest.approx(20.0)


def test_ssim_identity_and_blockwise_equals_whole(rng):
    t = ndimage.gaussian_filter(rng.random((19, 37, 23)), 1.0)
    p = t + 0.02 * rng.standard_normal(t.shape)
    assert M.ssim(t, t, 1.0) == pytest.approx(1.0)
    whole = M.ssim(p, t, 1.0)
    blocks = M.ssim(da.from_array(p, chunks=(7, 11, 9)), da.from_array(t, chunks=(7, 11, 9)), 1.0)
    assert blocks == pytest.approx(whole, abs=1e-12)
    assert 0 < whole < 1


def test_ncc_affine_invariance(rng):
    t = rng.random((10, 12, 14))
    assert M.ncc(3 * t + 7, t) == pytest.approx(1.0)
    assert M.ncc(-t, t) == pytest.approx(-1.0)
    assert abs(M.ncc(rng.random(t.shape), t)) < 0.1


def test_ms_ssim_orders_degradations(rng):
    t = ndimage.gaussian_filter(rng.random((32, 64, 64)), 1.5)
    t = (t - t.min()) / np.ptp(t)
    mild = ndimage.gaussian_filter(t, 0.7)
    strong = ndimage.gaussian_filter(t, 2.0)
    assert M.ms_ssim(t, t, 1.0) == pytest.approx(1.0)
    assert M.ms_ssim(strong, t, 1.0) < M.ms_ssim(mild, t, 1.0) < 1.0


def test_fwhm_of_gaussian_of_known_width():
    z, y, x = np.mgrid[0:41, 0:41, 0:41].astype(float)
    sd = (3.0, 1.5, 1.0)
    g = np.exp(-0.5 * (((z - 20) / sd[0]) ** 2 + ((y - 20) / sd[1]) ** 2 + ((x - 20) / sd[2]) ** 2))
    fw = M.bead_fwhm(g, (0.2, 0.1, 0.1), positions=np.array([[20, 20, 20]]))
    for ax, s, v in zip("zyx", sd, (0.2, 0.1, 0.1)):
        assert fw[ax]["mean_um"] == pytest.approx(2 * math.sqrt(2 * math.log(2)) * s * v, rel=1e-3)


def test_fourier_resolution_tracks_blur(rng):
    v = rng.random((64, 64, 64))
    blurred = ndimage.gaussian_filter(v, (3.0, 0.5, 0.5))
    res = M.fourier_resolution(blurred, (1.0, 1.0, 1.0))
    assert res["z"] > 2.5 * res["x"]
    assert res["y"] == pytest.approx(res["x"], rel=0.15)


def test_shape_mismatch_message():
    with pytest.raises(ValueError, match="shapes differ"):
        M.mse(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


def test_tube_fwhm_mismatch_grows_with_axial_blur():
    from scipy import ndimage

    from ssai3d_dask.evaluation.metrics import tube_fwhm_mismatch
    from ssai3d_dask.evaluation.simulate import simulate

    t = simulate("tubes", (48, 64, 64), seed=2).truth
    assert np.all(tube_fwhm_mismatch(t, t) < 1e-6)
    m2 = tube_fwhm_mismatch(ndimage.gaussian_filter1d(t, 2.0, axis=0), t)
    m4 = tube_fwhm_mismatch(ndimage.gaussian_filter1d(t, 4.0, axis=0), t)
    assert len(m2) >= 10 and np.median(m2) > 1.0 and np.median(m4) > np.median(m2) + 1.0
