"""Adaptation: lazy sampling, normalisation, denoising, pair synthesis, metrics, surgeon, sparse fine-tuning."""

import json

import dask.array as da
import numpy as np
import pytest
import torch

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.settings import AdaptSettings
from ssai3d_dask.models.folder import AdaptedModel, load_folder
from ssai3d_dask.ops.denoise import calibrate
from ssai3d_dask.errors import SettingsError, VolumeError
from ssai3d_dask.adaptation.finetune import finetune, freeze_except
from ssai3d_dask.settings import FinetuneSettings
from ssai3d_dask.evaluation.metrics import psnr
from ssai3d_dask.models.nafnet import build
from ssai3d_dask.adaptation.pairs import PairSynthesizer
from ssai3d_dask.adaptation.losses import psnr_loss
from ssai3d_dask.adaptation.psf import PSFBank, axial_forward
from ssai3d_dask.ops.resample import linear_positions, resample_linear
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.adaptation.sampling import PATCH_RANGE, keep_candidate, sample_lateral_patches, volume_statistics
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.adaptation.losses import pairwise_ranking_loss
from ssai3d_dask.adaptation.surgeon import layer_names, normalize_metrics, select_layers, zero_shot_metrics
from ssai3d_dask.models.surgeon import METRIC_NAMES, Surgeon
from ssai3d_dask.io.volume import Volume


class CountingArray:
    """An array-like that counts the bytes handed out, to prove sampling reads only what it needs."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim, self.read = a, a.shape, a.dtype, a.ndim, 0

    def __getitem__(self, idx):
        out = self.a[idx]
        self.read += out.nbytes
        return out


def test_sampling_reads_a_fraction_of_the_volume_and_is_deterministic(rng):
    big = (rng.random((64, 512, 512)) * 1000).astype(np.uint16)
    src = CountingArray(big)
    vol = Volume(da.from_array(src, chunks=(8, 128, 128)), (2.0, 1.0, 1.0))
    norm = volume_statistics(vol, seed=0, n_chunks=8)
    after_stats = src.read
    a = sample_lateral_patches(vol, 16, 64, norm, seed=3)
    assert src.read < 0.25 * big.nbytes
    assert after_stats <= 8 * 8 * 128 * 128 * 2
    b = sample_lateral_patches(vol, 16, 64, norm, seed=3)
    np.testing.assert_array_equal(a.patches, b.patches)
    assert a.patches.shape == (16, 64, 64)
    z, y, x = a.origins[0]
    np.testing.assert_allclose(a.patches[0], norm.apply(big[z, y:y + 64, x:x + 64].astype(np.float32)), rtol=1e-6)


def test_normalization_is_robust_to_hot_pixels(rng):
    v = rng.normal(100, 10, (16, 64, 64)).astype(np.float32)
    v[0, 0, :5] = 1e6
    norm = volume_statistics(Volume.from_array(v, (1, 1, 1), chunks=(8, 32, 32)), n_chunks=32)
    assert 50 < norm.low < 100 < norm.high < 160


def test_foreground_aware_sampling_prefers_signal():
    v = np.zeros((16, 256, 256), np.float32)
    v[:, :64, :64] = 1000  # 6% of the area is bright
    v += np.random.default_rng(0).random(v.shape).astype(np.float32)
    vol = Volume.from_array(v, (1, 1, 1), chunks=(4, 64, 64))
    norm = volume_statistics(vol)
    aware = sample_lateral_patches(vol, 40, 32, norm, seed=1, foreground_floor=0.05)
    uniform = sample_lateral_patches(vol, 40, 32, norm, seed=1, foreground_floor=1.0)  # accept every candidate
    frac = lambda ps: np.mean([p.mean() > 0.25 for p in ps.patches])  # noqa: E731
    assert frac(aware) >= 3 * frac(uniform) and frac(aware) >= 0.4


def test_sampled_patches_keep_bright_sparse_peaks_but_bound_hot_pixels():
    # Sub-resolution beads in a sparse stack sit far above the 99.9th percentile that normalisation maps to 1;
    # the training targets must keep their shape (a clip at 2 flattened the real confocal beads' tops: axial
    # / lateral FWHM 2.48 with it, 2.00 without, benchmarks/results/beads_real.md). A hot pixel stays bounded.
    v = 10.0 + np.random.default_rng(0).normal(0, 1, (8, 128, 128)).astype(np.float32)
    zz, yy, xx = np.mgrid[:8, :128, :128]
    v += 500.0 * np.exp(-((zz - 4) ** 2 / 2 + ((yy - 64) ** 2 + (xx - 64) ** 2) / (2 * 1.5**2)))
    v[0, 5, 5] = 1e7
    vol = Volume.from_array(v, (1, 1, 1), chunks=(8, 128, 128))
    norm = volume_statistics(vol)
    ps = sample_lateral_patches(vol, 8, 128, norm, seed=0, foreground_floor=1.0)
    centre = [p for p, (z, _, _) in zip(ps.patches, ps.origins) if z == 4]
    assert centre, "the sampler never drew the bead's plane"
    assert centre[0].max() > 4 and np.isclose(centre[0].max(), norm.apply(v[4].max()), rtol=1e-5)
    assert ps.patches.max() <= PATCH_RANGE[1]
    hot = [p for p, (z, _, _) in zip(ps.patches, ps.origins) if z == 0]
    assert not hot or hot[0].max() == PATCH_RANGE[1]


def test_keep_candidate_takes_foreground_and_a_floor_of_the_rest():
    norm = Normalization(0.0, 1.0, (1.0, 99.9), 0.4, 100)
    bright, dim = np.full((8, 8), 0.3, np.float32), np.full((8, 8), 0.1, np.float32)
    assert keep_candidate(bright, norm, draw=0.99, foreground_floor=0.1)  # mean 0.3 > half the threshold 0.2
    assert not keep_candidate(dim, norm, draw=0.5, foreground_floor=0.1)
    assert keep_candidate(dim, norm, draw=0.05, foreground_floor=0.1)  # the floor keeps some background
    assert not keep_candidate(dim, norm, draw=0.0, foreground_floor=0.0)


def test_resample_linear_block_equals_whole():
    x = torch.arange(20, dtype=torch.float32)[:, None] * torch.ones(1, 3)
    pos = linear_positions(20, 2.5)
    whole = resample_linear(x, 0, pos)
    block = resample_linear(x[6:14], 0, pos[20:30], offset=6)
    torch.testing.assert_close(block, whole[20:30])
    torch.testing.assert_close(whole[::5], x[::2])


def test_pairs_blur_along_rows_and_undersample():
    bank = PSFBank((4.0,), (0.0,))
    synth = PairSynthesizer(bank, z_factor=1.0)
    sharp = torch.zeros(1, 1, 64, 64)
    sharp[0, 0, 32, 32] = 1
    blurred, s = synth(sharp, np.random.default_rng(0), psf_index=np.array([0]))
    img = blurred[0, 0]
    peak = (img == img.max()).nonzero()[0]
    ps = s[0, 0].nonzero()[0]
    assert torch.equal(peak, ps)
    # the blur is long along one axis and short along the other (which one depends on the random transpose)
    spread_rows = (img[:, ps[1]] > 0.1 * img.max()).sum()
    spread_cols = (img[ps[0], :] > 0.1 * img.max()).sum()
    assert max(spread_rows, spread_cols) >= 4 * min(spread_rows, spread_cols)
    # undersampling x4: rows off the coarse grid are interpolations of rows on it
    ramp = torch.linspace(0, 1, 64)[:, None].expand(64, 64)[None, None] ** 2
    deg = axial_forward(ramp[0], 4.0, dim=-2, phase=0.0)
    torch.testing.assert_close(deg[0, ::4], ramp[0, 0, ::4])
    torch.testing.assert_close(deg[0, 2:61:4], 0.5 * (ramp[0, 0, 0:60:4] + ramp[0, 0, 4:64:4]))


def test_denoiser_gains_on_noisy_phantom_and_stays_off_when_clean():
    fm = ForwardModel(0.5, 3.0, photons=30, read_noise=0.02)
    noisy = simulate("tubes", (24, 96, 96), seed=0, model=fm).raw
    clean = simulate("tubes", (24, 96, 96), seed=0, model=ForwardModel(0.5, 3.0)).raw
    d = calibrate(noisy[::3], "auto")
    assert d.enabled
    assert psnr(d(noisy), clean, 1.0) > psnr(noisy, clean, 1.0) + 1.0
    smooth = simulate("spheres", (24, 96, 96), seed=0, model=ForwardModel(1.0, 3.0)).raw
    assert not calibrate(smooth[::3], "auto").enabled
    assert calibrate(smooth[::3], "on").enabled


@pytest.mark.parametrize("photons, read_noise", [(None, None), (100, 0.01), (30, 0.02), (None, 0.03)])
def test_noise_model_fits_poisson_gaussian_phantoms(photons, read_noise):
    """variance = gain * signal + offset of the normalised planes: gain within 35% of the truth
    (1 / (photons * range)), offset within 20% when read noise alone is there, and no noise added for a
    noise-free stack."""
    from ssai3d_dask.ops.denoise import fit_noise_model

    kw = {k: v for k, v in (("photons", photons), ("read_noise", read_noise)) if v}
    sim = simulate("tubes", (48, 96, 96), seed=16, model=ForwardModel(0.5, 4.0, z_factor=4, **kw))
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um)
    norm = volume_statistics(vol)
    nm = fit_noise_model(sample_lateral_patches(vol, 64, 64, norm, 0).patches)
    scale = 1 / (norm.high - norm.low)
    assert nm.used == bool(kw)
    if photons:
        assert abs(nm.gain - scale / photons) <= 0.35 * scale / photons
    elif read_noise:
        assert abs(nm.offset - (scale * read_noise) ** 2) <= 0.2 * (scale * read_noise) ** 2


def test_pairs_carry_the_stacks_noise_unblurred():
    """With a noise model in use, the blurred input gets noise of the model's variance at the blurred signal,
    independent from row to row (each row of an axial slice is its own raw plane); without one, the pairs
    are exactly the noise-free ones."""
    from ssai3d_dask.ops.denoise import NoiseModel

    sharp = torch.rand(16, 1, 64, 64)
    nm = NoiseModel(0.02, 0.001, True)
    noisy, s1 = PairSynthesizer(PSFBank(), 1.0, noise=nm)(sharp, np.random.default_rng(1))
    clean, s2 = PairSynthesizer(PSFBank(), 1.0)(sharp, np.random.default_rng(1))
    assert torch.equal(s1, s2)
    z = ((noisy - clean) / (nm.gain * clean + nm.offset).sqrt())[:, 0].numpy()
    assert abs(z.std() - 1) < 0.05 and abs(z.mean()) < 0.05
    assert abs(np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]) < 0.05
    off, _ = PairSynthesizer(PSFBank(), 1.0, noise=NoiseModel(0.02, 0.001, False))(sharp, np.random.default_rng(1))
    assert torch.equal(off, clean)


def test_zero_shot_metrics_and_selection():
    torch.manual_seed(0)
    m = build("small")
    synth = PairSynthesizer(PSFBank(), 3.0)
    b, s = synth(torch.rand(2, 1, 32, 32), np.random.default_rng(0))
    raw = zero_shot_metrics(m, b, s, psnr_loss)
    names = layer_names(m)
    assert raw.shape == (len(names), len(METRIC_NAMES)) and np.isfinite(raw).all()
    w = dict(m.named_modules())[names[0]].weight.detach()
    assert raw[0, METRIC_NAMES.index("weight_mean")] == pytest.approx(float(w.mean()), rel=1e-5)
    norm = normalize_metrics(raw)
    assert np.allclose(norm.mean(axis=0), 0, atol=1e-9)
    chosen = select_layers(names, norm[:, METRIC_NAMES.index("snip")], 0.1)
    assert len(chosen) == round(0.1 * len(names))



def test_zero_shot_metrics_in_chunks_equal_the_whole_batch():
    """Micro-batched metrics (bounded memory) combine to those of the whole batch at once."""
    torch.manual_seed(0)
    m = build("small")
    for p in m.parameters():
        if p.ndim == 4:  # beta/gamma start at zero; random weights make every metric non-trivial
            torch.nn.init.normal_(p, std=0.05)
    b, s = PairSynthesizer(PSFBank(), 3.0)(torch.rand(5, 1, 32, 32), np.random.default_rng(0))
    whole = zero_shot_metrics(m, b, s, psnr_loss, chunk=5)
    scale = np.abs(whole).max(axis=0)
    for chunk in (1, 2):
        assert (np.abs(zero_shot_metrics(m, b, s, psnr_loss, chunk=chunk) - whole).max(axis=0) <= 1e-4 * scale + 1e-12).all()

def test_surgeon_is_paper_sized_and_learns_a_ranking():
    s = Surgeon()
    assert 150_000 < sum(p.numel() for p in s.parameters()) < 250_000
    torch.manual_seed(0)
    x = torch.randn(40, 30)
    y = x[:, 3] * 2 - x[:, 7]
    opt = torch.optim.Adam(s.parameters(), lr=1e-3)
    for _ in range(200):
        loss = pairwise_ranking_loss(s(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    from scipy.stats import spearmanr

    assert spearmanr(s(x).detach().numpy(), y.numpy())[0] > 0.9


def test_sparse_finetuning_changes_only_chosen_layers():
    torch.manual_seed(0)
    m = build("small")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    layers = ["intro", "encoders.0.0.conv2"]
    patches = np.random.default_rng(0).random((8, 32, 32)).astype(np.float32)
    finetune(m, layers, patches, PairSynthesizer(PSFBank(), 2.0), FinetuneSettings(iterations=3, batch_size=2),
             progress=False)
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"intro.weight", "intro.bias", "encoders.0.0.conv2.weight", "encoders.0.0.conv2.bias"}
    assert freeze_except(m, None) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_adapt_adds_the_stacks_noise_to_training_inputs_unless_off(tmp_path, mode):
    sim = simulate("tubes", (48, 96, 96), seed=16, model=ForwardModel(0.5, 4.0, z_factor=4, photons=100,
                                                                      read_noise=0.01))
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um)
    s = AdaptSettings(n_patches=24, patch_px=64, denoise="off", input_noise=mode, psf_bank="paper",
                      finetune=FinetuneSettings(iterations=2, batch_size=2))
    adapt(vol, tmp_path / "m", s, progress=False)
    noise = json.loads((tmp_path / "m" / "manifest.json").read_text())["input_noise"]
    assert noise["sd_at_half_range"] > 0.05 and noise["used"] is (mode == "auto")


@pytest.mark.slow
def test_adapt_writes_model_dir(tmp_path):
    sim = simulate("strands", (48, 96, 96), seed=0, model=ForwardModel(0.5, 3.0, z_factor=4))
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(4, 48, 48))
    s = AdaptSettings(n_patches=24, patch_px=64, finetune=FinetuneSettings(iterations=5, batch_size=4))
    adapt(vol, tmp_path / "m", s, progress=False)
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert man["z_factor"] == pytest.approx(4.0)
    assert man["selection"]["method"] == "all" and man["selection"]["layers"] == list(man["layer_metrics"])
    assert set(next(iter(man["layer_metrics"].values()))["raw"]) == set(METRIC_NAMES)
    # the reach of the adapted weights, measured at their pooling window, comes back with the folder
    assert man["reach"]["pool_window_px"] == man["pool_window_px"] and man["reach"]["reach_px"] % 16 == 0
    assert load_folder(tmp_path / "m").model.reach == man["reach"]
    assert (tmp_path / "m" / "validation.png").stat().st_size > 1000
    # the check on a real crop: restored, with interpolation's ratio beside it, and its panel
    check = man["axial_check"]
    assert check["z_over_lateral"] > 0 and check["interp_z_over_lateral"] < check["limit"]
    assert isinstance(check["trusted"], bool) and (tmp_path / "m" / "axial_check.png").stat().st_size > 1000
    # --psf-bank auto (default): one PSF, the estimate (true extra blur 2.96 px) times the lean, along z
    assert man["psf_bank"]["source"] == "auto" and abs(man["psf_estimate"]["sigma_px"] - 2.96) < 0.15 * 2.96
    assert man["psf_bank"]["lean"] == AdaptSettings().psf_lean > 1
    assert man["psf_bank"]["sigmas_px"] == [round(man["psf_bank"]["lean"] * man["psf_estimate"]["sigma_px"], 3)]
    assert man["psf_bank"]["angles_deg"] == [0.0]
    assert man["history"]["cooldown_from"] == 0  # 5 steps: the rate decays over the whole run
    assert man["input_noise"]["used"] is False  # noise-free: the training inputs stay as they were
    loaded = AdaptedModel.load(tmp_path / "m")
    assert loaded.norm.high > loaded.norm.low
    with pytest.raises(Exception, match="already exists"):
        adapt(vol, tmp_path / "m", s, progress=False)


def test_bad_settings_raise_before_work():
    vol = Volume.from_array(np.zeros((8, 40, 40), np.float32), (2, 1, 1))
    with pytest.raises(SettingsError, match="exceeds the lateral size"):
        adapt(vol, None, AdaptSettings(patch_px=64))
    with pytest.raises(SettingsError, match="multiple of 16"):
        adapt(vol, None, AdaptSettings(patch_px=30))
    with pytest.raises(SettingsError, match="layers-fraction"):
        adapt(vol, None, AdaptSettings(patch_px=32, layers_fraction=0))


def test_default_patch_fits_a_small_stack():
    """The default 96-px patch shrinks to the largest multiple of 16 that fits; a chosen patch is kept (and
    refused when too big); a stack narrower than the smallest patch is refused with its size named."""
    vol = Volume.from_array(np.zeros((8, 64, 72), np.float32), (2, 1, 1))
    assert AdaptSettings().fitted(vol).patch_px == 64
    assert AdaptSettings(patch_px=32).fitted(vol).patch_px == 32
    assert AdaptSettings().fitted(Volume.from_array(np.zeros((8, 200, 200), np.float32), (2, 1, 1))).patch_px == 96
    with pytest.raises(SettingsError, match="exceeds the lateral size"):
        AdaptSettings(patch_px=80).fitted(vol).check_volume(vol)
    narrow = Volume.from_array(np.zeros((8, 64, 12), np.float32), (2, 1, 1))
    with pytest.raises(VolumeError, match=r"lateral size \(64, 12\) is below the smallest training patch"):
        adapt(narrow, None, AdaptSettings())


def test_denoiser_calibration_on_mostly_empty_patches_is_finite():
    """Sparse volumes give constant (all-background) patches: the noise estimate must not become NaN
    (a NaN h once turned non-local means on, with NaN strength, for every plane)."""
    from ssai3d_dask.ops.denoise import Denoiser, calibrate

    patches = np.zeros((20, 64, 64), np.float32)
    patches[3, 10:20, 10:20] = 1.0
    d = calibrate(patches, "auto")
    assert not d.enabled and np.isfinite(d.estimated_noise)
    noisy = np.clip(0.3 + np.random.default_rng(0).normal(0, 0.05, (20, 64, 64)), 0, 1).astype(np.float32)
    noisy[:5] = 0.0
    d = calibrate(noisy, "auto")
    assert d.enabled and abs(d.estimated_noise - 0.05) < 0.01
    assert not Denoiser(float("nan"), float("nan"), "auto").enabled


def test_bf16_fine_tuning_matches_fp32():
    """bf16 autocast keeps fp32 master weights and an fp32 loss: at the same seed and steps the validation
    PSNR (evaluated in fp32) stays within 0.1 dB of fp32 training (measured: 0.001 dB on an H100 at 100
    steps; here emulated bf16 on CPU, so few small steps)."""
    sim = simulate("tubes", (16, 64, 64), seed=2, model=ForwardModel(0.5, 3.0))
    patches = np.ascontiguousarray(sim.truth[::2, :32, :32] / sim.truth.max(), np.float32)
    synth = PairSynthesizer(PSFBank((3.0, 4.0), (0.0,)), 2.0)
    val = synth(torch.from_numpy(patches[:4, None]), np.random.default_rng(5))
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build("small")
        model.set_pool_window(32)
        h = finetune(model, None, patches[4:], synth, FinetuneSettings(iterations=12, batch_size=4, device="cpu",
                                                                        precision=precision), val=val,
                     progress=False, seed=1)
        assert h["precision"] == precision
        results[precision] = h
    assert results["fp32"]["val_psnr_after"] > results["fp32"]["val_psnr_before"]
    assert abs(results["bf16"]["val_psnr_after"] - results["fp32"]["val_psnr_after"]) < 0.1
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _plateau_setup():
    sim = simulate("tubes", (16, 64, 64), seed=2, model=ForwardModel(0.5, 3.0))
    patches = np.ascontiguousarray(sim.truth[::2, :32, :32] / sim.truth.max(), np.float32)
    synth = PairSynthesizer(PSFBank((3.0, 4.0), (0.0,)), 2.0)
    val = synth(torch.from_numpy(patches[:4, None]), np.random.default_rng(5))
    torch.manual_seed(0)
    model = build("small")
    model.set_pool_window(32)
    return model, patches[4:], synth, val


def test_fine_tuning_stops_on_a_plateau_and_keeps_the_best_weights():
    model, patches, synth, val = _plateau_setup()
    # A learning rate too small to move the validation PSNR by 0.01 dB: a plateau from the start.
    # No cooldown: training stops at the stall.
    h = finetune(model, None, patches, synth, FinetuneSettings(iterations=200, batch_size=2, lr=1e-9, patience=6,
                                                                cooldown=0, eval_every=3, device="cpu"), val=val,
                 progress=False)
    assert h["stopped_by"] == "patience" and h["steps"] == 6 and h["cooldown_from"] == 6
    assert [s for s, _ in h["val_curve"]] == [3, 6]
    assert abs(h["val_psnr_after"] - h["val_psnr_before"]) < 0.01
    # The weights kept are the curve's maximum (the starting point included).
    assert h["val_psnr_after"] == pytest.approx(max([h["val_psnr_before"]] + [p for _, p in h["val_curve"]]),
                                                abs=1e-3)
    # With a cooldown: the stall at step 6 starts the decay, which runs its 9 steps before training stops.
    model, patches, synth, val = _plateau_setup()
    h = finetune(model, None, patches, synth, FinetuneSettings(iterations=200, batch_size=2, lr=1e-9, patience=6,
                                                                cooldown=9, eval_every=3, device="cpu"), val=val,
                 progress=False)
    assert h["stopped_by"] == "patience" and h["cooldown_from"] == 6 and h["steps"] == 15
    assert [s for s, _ in h["val_curve"]] == [3, 6, 9, 12, 15]
    # Learning: the curve rises, the run ends at --iterations, and the kept weights are the curve's best.
    model, patches, synth, val = _plateau_setup()
    h = finetune(model, None, patches, synth, FinetuneSettings(iterations=12, batch_size=4, lr=1e-3, patience=100,
                                                                eval_every=4, device="cpu"), val=val,
                 progress=False)
    assert h["stopped_by"] == "iterations" and h["steps"] == 12 and len(h["val_curve"]) == 3
    best = max(p for _, p in h["val_curve"])
    assert best > h["val_psnr_before"] + 0.01
    assert h["val_psnr_after"] == pytest.approx(best, abs=1e-3)


def test_random_crop_cuts_the_same_square_of_each_pair():
    from ssai3d_dask.adaptation.finetune import random_crop

    blurred = torch.arange(3 * 48 * 48, dtype=torch.float32).reshape(3, 1, 48, 48)
    sharp = blurred * 2
    b, s = random_crop(blurred, sharp, 16, np.random.default_rng(0))
    assert b.shape == s.shape == (3, 1, 16, 16) and torch.equal(s, b * 2)
    # each crop is a contiguous square of its own pair (row steps of 48, column steps of 1) ...
    for i, crop in enumerate(b[:, 0]):
        assert int(crop[0, 0]) // (48 * 48) == i
        assert torch.equal(crop - crop[0, 0], (torch.arange(16)[:, None] * 48 + torch.arange(16)).float())
    # ... at its own place; 0 or a size not smaller than the pair keeps whole pairs
    assert len({int(c[0, 0]) % (48 * 48) for c in b[:, 0]}) > 1
    assert random_crop(blurred, sharp, 0, np.random.default_rng(0))[0] is blurred
    assert random_crop(blurred, sharp, 48, np.random.default_rng(0))[1] is sharp


def test_training_crop_holds_the_blur_or_falls_back_to_whole_pairs():
    from ssai3d_dask.adaptation.finetune import training_crop

    assert training_crop(64, 96, (0.29,), 3.0) == 64  # a narrow blur: crops
    assert training_crop(64, 96, (13.9,), 5.56) == 0  # the real beads' blur (+-3 sd = 83 px): whole pairs
    assert training_crop(64, 96, (2.0,), 9.0) == 0  # 64 px would hold 7 z steps of 9 px
    assert training_crop(64, 64, (1.0,), 1.0) == training_crop(0, 96, (1.0,), 1.0) == 0


def test_fine_tuning_evaluates_and_keeps_the_weight_average():
    """With --ema the curve is the moving average's and the model ends with it (here: no patience, one cosine,
    so the last point is the result); with --ema 0 the weights themselves, which differ."""
    results = {}
    for ema in (0.9, 0.0):
        model, patches, synth, val = _plateau_setup()
        h = finetune(model, None, patches, synth, FinetuneSettings(iterations=12, batch_size=4, lr=1e-3, patience=0,
                                                                    eval_every=4, ema=ema, crop_px=16,
                                                                    device="cpu"), val=val, progress=False)
        assert h["steps"] == 12 and h["val_psnr_after"] == pytest.approx(h["val_curve"][-1][1], abs=1e-3)
        results[ema] = h["val_psnr_after"]
    assert abs(results[0.9] - results[0.0]) > 1e-3


def test_fine_tuning_learning_rate_holds_then_decays():
    """The rate's multiple: 1 until the decay starts (the step budget's end by default, earlier on a stall),
    then a cosine to 1/100 over the cooldown."""
    from ssai3d_dask.adaptation.finetune import _Budget

    model, _, _, val = _plateau_setup()
    b = _Budget(model, list(model.parameters()), val, FinetuneSettings(iterations=1000, patience=100, cooldown=200))
    assert b.cool_from == 800 and b.lr_factor(0) == 1.0 and b.lr_factor(800) == 1.0
    assert b.lr_factor(900) == pytest.approx(0.505) and b.lr_factor(1000) == pytest.approx(0.01)
    b._start_cooldown(300, "patience")
    assert b.lr_factor(300) == 1.0 and b.lr_factor(500) == pytest.approx(0.01) and b.lr_factor(700) == 0.01
    # a budget shorter than the cooldown decays over the whole run (the former cosine)
    b = _Budget(model, list(model.parameters()), val, FinetuneSettings(iterations=150, patience=100, cooldown=250))
    assert b.cool_from == 0 and b.lr_factor(75) == pytest.approx(0.505)


def test_fine_tuning_stops_at_max_minutes():
    model, patches, synth, val = _plateau_setup()
    h = finetune(model, None, patches, synth, FinetuneSettings(iterations=10_000, batch_size=2, max_minutes=1e-6,
                                                                device="cpu"), val=val, progress=False)
    assert h["stopped_by"] == "max_minutes" and h["steps"] == 1


@pytest.mark.parametrize("kind,sigma_axial,z_factor,photons", [
    ("tubes", 5.0, 3, 200), ("tubes", 3.0, 1, None), ("tubes", 8.0, 3, None),
    # Poisson-limited tissue: the per-window wavelet noise floor read 0.5-0.65 of the mean noise sd here and the
    # estimate failed (1.02 px for 2.96 at 100 photons, 9.70 for 5.98 at 30; benchmarks/results/psf_estimate.md)
    ("tissue", 3.0, 3, 100), ("tissue", 6.0, 3, 30)])
def test_axial_blur_estimate_on_phantoms(kind, sigma_axial, z_factor, photons):
    """The stack's extra axial blur, estimated from the stack alone, within 15% of the truth
    (sqrt(axial^2 - lateral^2) on the lateral grid). The note of the PSF-bank issue has the full table."""
    from ssai3d_dask.adaptation.psf_estimate import estimate_axial_blur

    fm = ForwardModel(0.5, sigma_axial, z_factor=z_factor,
                      **({"photons": photons, "read_noise": 0.01} if photons else {}))
    sim = simulate(kind, (96, 128, 128), seed=1, model=fm)
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um)
    est = estimate_axial_blur(vol, volume_statistics(vol))
    true = (sigma_axial ** 2 - 0.5 ** 2) ** 0.5
    assert abs(est.sigma_px - true) <= 0.15 * true
    assert est.low_px <= est.sigma_px <= est.high_px and est.z_factor == pytest.approx(z_factor)


def test_axial_blur_estimate_of_a_wide_blur_under_noise():
    """Wide blur under Poisson noise on a stack wide and deep enough for 128-px profiles: within 15% (measured
    -8.1%); with 64-px profiles, the only length before, such stacks read 11-45% low."""
    from ssai3d_dask.adaptation.psf_estimate import estimate_axial_blur

    sim = simulate("tubes", (136, 192, 192), seed=7,
                   model=ForwardModel(0.5, 10.0, z_factor=3, photons=100, read_noise=0.01))
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um)
    est = estimate_axial_blur(vol, volume_statistics(vol))
    true = (10.0 ** 2 - 0.5 ** 2) ** 0.5
    assert abs(est.sigma_px - true) <= 0.15 * true


def test_axial_blur_estimate_on_a_thin_stack():
    """12 planes at dz/dx = 4 (48 isotropic planes): shorter profiles, still within 15% (measured -8%)."""
    from ssai3d_dask.adaptation.psf_estimate import estimate_axial_blur

    sim = simulate("tubes", (48, 96, 96), seed=16, model=ForwardModel(0.5, 4.0, z_factor=4))
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um)
    est = estimate_axial_blur(vol, volume_statistics(vol))
    true = (4.0 ** 2 - 0.5 ** 2) ** 0.5
    assert abs(est.sigma_px - true) <= 0.15 * true


def test_profile_length_grows_with_the_stack():
    """64 px up to 128-px-wide stacks (as before), up to 128 px where depth and 32 px of context each side allow."""
    from ssai3d_dask.adaptation.psf_estimate import profile_length

    assert profile_length((96, 128, 128), 1.0) == 64
    assert profile_length((12, 96, 96), 4.0) == 40  # depth 41 isotropic planes
    assert profile_length((136, 192, 192), 1.0) == 128
    assert profile_length((46, 192, 192), 3.0) == 128
    assert profile_length((41, 150, 150), 5.5576) == 80  # the confocal bead stack: 150 px wide
    assert profile_length((600, 2048, 2048), 1.0) == 128
    assert profile_length((600, 2048, 2048), 1.0, length=64) == 64


def test_axial_blur_estimate_refuses_a_stack_too_thin():
    from ssai3d_dask.adaptation.psf_estimate import estimate_axial_blur

    vol = Volume.from_array(np.random.default_rng(0).random((6, 64, 64), np.float32), (0.4, 0.1, 0.1))
    with pytest.raises(VolumeError, match="too small to estimate"):
        estimate_axial_blur(vol, volume_statistics(vol))


def test_given_widths_or_angles_replace_the_auto_banks_and_the_config_keeps_them_unset(tmp_path):
    from ssai3d_dask.settings import dump_config, read_config

    sim = simulate("strands", (48, 96, 96), seed=0, model=ForwardModel(0.5, 3.0, z_factor=4))
    vol = Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(4, 48, 48))
    s = AdaptSettings(n_patches=8, patch_px=32, angles_deg=(-10.0, 0.0, 10.0), psf_lean=1.0,
                      finetune=FinetuneSettings(iterations=1, batch_size=2))
    man = adapt(vol, None, s, progress=False).manifest
    bank, est = man.extra["psf_bank"], man.extra["psf_estimate"]["sigma_px"]
    assert bank["angles_deg"] == [-10.0, 0.0, 10.0] and bank["sigmas_px"] == [round(est, 3)]
    # given blurs replace the estimate and are leaned as it is; 'paper' takes them as they are
    s = AdaptSettings(n_patches=8, patch_px=32, sigmas_px=(2.0, 3.0), psf_lean=1.2,
                      finetune=FinetuneSettings(iterations=1))
    bank = adapt(vol, None, s, progress=False).manifest.extra["psf_bank"]
    assert bank["sigmas_px"] == [2.4, 3.6] and bank["angles_deg"] == [0.0] and bank["lean"] == 1.2
    bank = adapt(vol, None, s.model_copy(update={"psf_bank": "paper"}), progress=False).manifest.extra["psf_bank"]
    assert bank["sigmas_px"] == [2.0, 3.0] and "lean" not in bank and len(bank["angles_deg"]) == 5
    # a printed default config read back leaves the bank to the mode (no widths written in)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(dump_config({"adapt": AdaptSettings()}))
    again = AdaptSettings(**read_config(cfg)["adapt"])
    assert again.sigmas_px is None and again.angles_deg is None and again == AdaptSettings()


def test_wide_bank_widens_to_the_estimate_and_never_narrows():
    from ssai3d_dask.adaptation.psf_estimate import auto_bank_widths

    paper = (3.0, 4.0, 5.0, 6.0, 7.0)
    assert auto_bank_widths(paper, 2.0) == paper and auto_bank_widths(paper, 4.0) == paper
    assert auto_bank_widths(paper, 12.0) == (9.0, 12.0, 15.0, 18.0, 21.0)  # centred 1.25x past the estimate
    assert auto_bank_widths((2.0, 4.0), 6.0) == (5.0, 10.0)  # user widths: centre = their median


def test_auto_bank_falls_back_to_the_fixed_bank_when_the_stack_is_too_thin(tmp_path, caplog):
    rng = np.random.default_rng(0)
    vol = Volume.from_array(rng.random((6, 64, 64), np.float32), (0.4, 0.1, 0.1))
    s = AdaptSettings(n_patches=8, patch_px=32, finetune=FinetuneSettings(iterations=1, batch_size=2))
    with caplog.at_level("WARNING"):
        adapted = adapt(vol, None, s, progress=False)
    assert "too small to estimate" in caplog.text and "fixed PSF bank" in caplog.text
    assert adapted.manifest.extra["psf_bank"]["sigmas_px"] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert "too small to estimate" in adapted.manifest.extra["psf_estimate"]["error"]
    # a measured blur given with --sigmas-px needs no estimate: still one leaned PSF along z
    adapted = adapt(vol, None, s.model_copy(update={"sigmas_px": (4.0,), "psf_lean": 1.25}), progress=False)
    assert adapted.manifest.extra["psf_bank"]["sigmas_px"] == [5.0] and adapted.manifest.extra["psf_bank"]["angles_deg"] == [0.0]
