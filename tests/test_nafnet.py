"""NAFNet: official key names/shapes and parameter counts, checkpoint I/O and errors, tile invariance."""

import json
import pickle

import numpy as np
import pytest
import torch

from ssai3d_dask.models.checkpoint import load_model, save_network, sha256_file, shipped_path
from ssai3d_dask.errors import CheckpointError
from ssai3d_dask.models.nafnet import PRESETS, build, count_parameters, gray_forward, receptive_radius_px

from .tiling import tiled_forward


def official_state_shapes(width, enc, middle, dec, img_channel=3):
    """Key names and shapes of the official NAFNet implementation, written out from its structure."""
    shapes = {"intro.weight": (width, img_channel, 3, 3), "intro.bias": (width,),
              "ending.weight": (img_channel, width, 3, 3), "ending.bias": (img_channel,)}

    def block(prefix, c):
        d = 2 * c
        shapes.update({
            f"{prefix}.conv1.weight": (d, c, 1, 1), f"{prefix}.conv1.bias": (d,),
            f"{prefix}.conv2.weight": (d, 1, 3, 3), f"{prefix}.conv2.bias": (d,),
            f"{prefix}.conv3.weight": (c, d // 2, 1, 1), f"{prefix}.conv3.bias": (c,),
            f"{prefix}.sca.1.weight": (d // 2, d // 2, 1, 1), f"{prefix}.sca.1.bias": (d // 2,),
            f"{prefix}.conv4.weight": (2 * c, c, 1, 1), f"{prefix}.conv4.bias": (2 * c,),
            f"{prefix}.conv5.weight": (c, c, 1, 1), f"{prefix}.conv5.bias": (c,),
            f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,),
            f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,),
            f"{prefix}.beta": (1, c, 1, 1), f"{prefix}.gamma": (1, c, 1, 1)})

    c = width
    for i, n in enumerate(enc):
        for j in range(n):
            block(f"encoders.{i}.{j}", c)
        shapes[f"downs.{i}.weight"] = (2 * c, c, 2, 2)
        shapes[f"downs.{i}.bias"] = (2 * c,)
        c *= 2
    for j in range(middle):
        block(f"middle_blks.{j}", c)
    for i, n in enumerate(dec):
        shapes[f"ups.{i}.0.weight"] = (2 * c, c, 1, 1)
        c //= 2
        for j in range(n):
            block(f"decoders.{i}.{j}", c)
    return shapes


@pytest.mark.parametrize("preset,params", [("paper", 67_888_835), ("gopro-width32", 17_111_907)])
def test_official_keys_shapes_and_parameter_count(preset, params):
    cfg = PRESETS[preset]
    model = build(preset)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_state_shapes(cfg.width, cfg.enc_blk_nums, cfg.middle_blk_num, cfg.dec_blk_nums)
    # Published: NAFNet-REDS/GoPro width64 67.89M parameters, GoPro width32 17.11M.
    assert count_parameters(model) == params


@pytest.mark.parametrize("key", ["params", "params_ema"])
def test_basicsr_checkpoint_loads_strictly(tmp_path, key):
    cfg = PRESETS["gopro-width32"]
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.02
             for k, s in official_state_shapes(cfg.width, cfg.enc_blk_nums, cfg.middle_blk_num, cfg.dec_blk_nums).items()}
    torch.save({key: state}, tmp_path / "NAFNet-GoPro-width32.pth")
    model, manifest = load_model(tmp_path / "NAFNet-GoPro-width32.pth")  # architecture inferred from shapes
    assert model.config.width == 32 and model.config.enc_blk_nums == (1, 1, 1, 28)
    assert manifest["format"] == "basicsr"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_our_format_round_trip_fp16(tmp_path):
    model = build("small")
    save_network(model, tmp_path / "m.pt", {"note": "x"}, half=True)
    loaded, manifest = load_model(tmp_path / "m.pt")
    assert manifest["note"] == "x" and len(manifest["sha256"]) == 64
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_pickled_code_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"params": Evil()}, f)
    with pytest.raises(CheckpointError, match="pickled"):
        load_model(tmp_path / "evil.pt")


def test_not_a_checkpoint_and_missing(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|pickled"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_architecture_mismatch_names_keys_and_fitting_preset(tmp_path):
    torch.save({"params": build("small").state_dict()}, tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match=r"missing keys.*preset 'small' fits"):
        load_model(tmp_path / "small.pth", preset="gopro-width32")


def test_gray_forward_replicates_and_averages():
    model = build("small").eval()
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        y = gray_forward(model, x)
        ref = model(x.repeat(1, 3, 1, 1)).mean(1, keepdim=True)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref)


def _nontrivial_small():
    torch.manual_seed(0)
    m = build("small").eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)  # fresh NAFBlocks are identities; make them act
            if "sca.1.weight" in n:
                p.normal_(0, 0.3)  # and give channel attention real weight
    return m


def test_tiles_equal_whole_with_local_pooling():
    m = _nontrivial_small()
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 400, 330), 5, 1, 2)
    m.set_pool_window(16)
    halo = 176
    assert halo >= receptive_radius_px(m.config, 16) - 16
    with torch.no_grad():
        whole = m(img)
    tiled = tiled_forward(m, img, 128, halo)
    assert (whole - tiled).abs().max().item() < 1e-5
    # The TLC window (1.5 x training patch) with a practical halo of 96 px: within 1e-3 of outputs ~0.4.
    m.set_pool_window(m.local_window())
    with torch.no_grad():
        whole = m(img)
    assert (whole - tiled_forward(m, img, 128, 96)).abs().max().item() < 1e-3


def test_global_pooling_is_not_tile_invariant():
    """The reason for local pooling: with NAFNet's global SCA, tiles differ from the whole."""
    m = _nontrivial_small()
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 256, 256), 5, 1, 2)
    img[..., :128, :] *= 3  # different statistics in different tiles
    with torch.no_grad():
        whole = m(img)
    global_diff = (whole - tiled_forward(m, img, 128, 96)).abs().max().item()
    m.set_pool_window(16)
    with torch.no_grad():
        whole = m(img)
    local_diff = (whole - tiled_forward(m, img, 128, 96)).abs().max().item()
    assert global_diff > 1e-3 and global_diff > 100 * local_diff


def test_measured_reach_is_the_smallest_halo_within_tolerance():
    from ssai3d_dask.models.reach import REACH_TOLERANCE, measure_reach, probe_image

    m = _nontrivial_small()
    m.set_pool_window(m.local_window())
    r = measure_reach(m, max_px=160)
    assert r["reach_px"] % 16 == 0 and r["pool_window_px"] == m.local_window()
    assert r["tile_error"] <= REACH_TOLERANCE
    # one grid step less is not enough (the bisection returns the smallest halo, not just a sufficient one)
    if r["reach_px"] > 16:
        assert measure_reach(m, max_px=r["reach_px"] - 16)["tile_error"] > REACH_TOLERANCE
    # an independent check with another tiling of the probe: within the promised 1e-3 at the measured reach
    img = probe_image(384, 320)
    with torch.no_grad():
        assert (m(img) - tiled_forward(m, img, 128, r["reach_px"])).abs().max().item() < 2 * REACH_TOLERANCE
    # with global pooling no halo suffices: the measurement says so instead of returning a small one
    m.set_pool_window(None)
    g = measure_reach(m, max_px=64)
    assert g["reach_px"] == 64 and g["tile_error"] > REACH_TOLERANCE


def test_default_halo_follows_the_reach_recorded_with_the_weights(tmp_path):
    from ssai3d_dask.ops.denoise import Denoiser
    from ssai3d_dask.restoration.kernels import BASE_REACH_PX, default_halo

    m = build("small")
    m.set_pool_window(m.local_window())
    assert default_halo(m, Denoiser()) == BASE_REACH_PX  # nothing recorded: the shipped base's measurement
    reach = {"reach_px": 160, "tolerance": 5e-4, "tile_error": 1e-4, "pool_window_px": m.local_window()}
    save_network(m, tmp_path / "far.pt", {"kind": "base", "reach": reach})
    far, _ = load_model(tmp_path / "far.pt")
    assert far.reach == reach
    far.set_pool_window(far.local_window())
    assert default_halo(far, Denoiser()) == 160
    far.set_pool_window(32)  # measured at another window: not this model's reach
    assert default_halo(far, Denoiser()) == BASE_REACH_PX


def test_shipped_base_model_loads():
    if not shipped_path().exists():
        pytest.skip("shipped base model not built yet")
    model, manifest = load_model("base")
    assert manifest["kind"] == "base" and manifest["preset"] == "small"
    assert shipped_path().stat().st_size < 25e6
    # the sidecar describes exactly these weights (a base shipped without rewriting it would fail here)
    sidecar = json.loads(shipped_path().with_suffix(".json").read_text())
    assert sidecar["sha256"] == sha256_file(shipped_path()) == manifest["sha256"]
    assert sidecar["reach"]["reach_px"] >= 48 and sidecar["reach"]["pool_window_px"] == model.local_window()


def test_pretrain_warm_start_from_a_checkpoint(tmp_path):
    from ssai3d_dask.adaptation.pretrain import pretrain
    from ssai3d_dask.settings import PretrainSettings

    parent, parent_manifest = load_model("base")
    out = pretrain(tmp_path / "cont.pt", PretrainSettings(iterations=2, batch_size=2, patch_px=32, seed=1,
                                                          init=str(shipped_path()), eval_every=2, note="a test run"),
                   progress=False)
    child, manifest = load_model(out)
    assert manifest["init_from"]["sha256"] == parent_manifest["sha256"]
    assert "--init" in manifest["command"] and manifest["note"] == "a test run"
    # the JSON sidecar shipped beside weights: the same manifest and the checksum of these weights
    sidecar = json.loads((tmp_path / "cont.json").read_text())
    assert sidecar["sha256"] == sha256_file(out) and sidecar["history"] == manifest["history"]
    assert sidecar["init_from"]["sha256"] == parent_manifest["sha256"]
    assert sidecar["reach"] == manifest["reach"] == child.reach and manifest["reach"]["reach_px"] % 16 == 0
    # two small steps from the parent: close to it, but trained
    p, c = parent.state_dict(), child.state_dict()
    assert any(not torch.equal(p[k], c[k]) for k in p)
    assert max((p[k].float() - c[k].float()).abs().max().item() for k in p) < 0.05
    with pytest.raises(ValueError, match="not a 'gopro-width32' model"):
        pretrain(tmp_path / "x.pt", PretrainSettings(preset="gopro-width32", iterations=1, init=str(shipped_path())),
                 progress=False)


def test_pretraining_degradations_reach_coarse_z_blur_and_keep_the_held_out_set():
    from ssai3d_dask.adaptation.losses import psnr_loss
    from ssai3d_dask.adaptation.pretrain import heldout_set
    from ssai3d_dask.adaptation.pretrain_data import kernel_size_for, random_kernel

    def axial_widths(max_sd):
        rng = np.random.default_rng(5)
        widths = []
        for _ in range(3000):
            k, _, kind = random_kernel(rng, kernel_size_for(max_sd), max_sd)
            if kind == "axial":  # second moment along axis 0 of the (near-vertical) kernel
                y = np.arange(k.shape[0]) - k.shape[0] // 2
                widths.append(np.sqrt((k.sum(1) * y**2).sum()))
        return np.array(widths)

    narrow, wide = axial_widths(7.5), axial_widths(16.0)
    assert narrow.max() < 7.6 and kernel_size_for(7.5) == 49 and kernel_size_for(16.0) == 97
    # a third of the axial samples is wider than the old range, up to sd 16 (rotation up to 45 deg shrinks
    # the axis-0 moment by up to 1/sqrt(2))
    assert 0.2 < (wide > 7.6).mean() < 0.35 and 10.5 < wide.max() < 16.01
    # the held-out set of the in-training curve is the one every earlier base was measured on: its input
    # PSNR is the 25.599 dB recorded in the shipped manifest's history
    x, y = heldout_set()
    pin = float(np.mean([-psnr_loss(x[i:i + 16].clamp(0, 1), y[i:i + 16]).item() for i in range(0, 64, 16)]))
    recorded = json.loads(shipped_path().with_suffix(".json").read_text())["history"][0]["heldout_psnr_in"]
    assert pin == pytest.approx(recorded, abs=1e-3)
