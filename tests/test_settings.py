"""Settings models, the settings file, the public API, model folders and the one error type."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ssai3d_dask
from ssai3d_dask.cli import friendly_errors, main
from ssai3d_dask.errors import CheckpointError, SettingsError
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.models.folder import FOLDER_VERSION, load_folder, read_manifest, write_folder
from ssai3d_dask.models.manifest import ModelManifest
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.restoration.methods import get_method
from ssai3d_dask.models.unet import CareUNet
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import (AdaptSettings, CareSettings, RestoreSettings, RLMethod, dump_config,
                                  read_config)

from .conftest import make_model_dir


def test_settings_are_checked_when_built_and_name_the_option():
    with pytest.raises(SettingsError, match=r"view \(--view\)"):
        RestoreSettings(view="xy")
    with pytest.raises(SettingsError, match=r"finetune.optimizer \(--optimizer\)"):
        AdaptSettings(finetune={"optimizer": "sgd"})  # once fell back to Adam silently
    with pytest.raises(SettingsError, match=r"n_patches \(--n-patches\)"):
        AdaptSettings(n_patches=0)
    with pytest.raises(SettingsError, match="multiples of 16"):
        RestoreSettings(chunks=(10, 16, 16))
    with pytest.raises(SettingsError, match="needs the PSF"):
        RestoreSettings(method="rl")
    with pytest.raises(SettingsError, match="are for --method rl"):
        RestoreSettings(method="interp", psf_sigma_um=(0.3, 0.1, 0.1))
    with pytest.raises(SettingsError, match="unknown setting"):
        RestoreSettings(chunkz=(16, 16, 16))
    with pytest.raises(SettingsError, match=r"psf_sigma_um .*required"):
        CareSettings()


def test_restore_settings_method_is_discriminated_and_accepts_the_flat_form():
    flat = RestoreSettings(method="rl", psf_sigma_um=(0.3, 0.1, 0.1), rl_iterations=7)
    nested = RestoreSettings(method={"name": "rl", "psf_sigma_um": [0.3, 0.1, 0.1], "iterations": 7})
    assert flat == nested and isinstance(flat.method, RLMethod) and flat.method.iterations == 7
    assert RestoreSettings().method.name == "ssai3d"
    assert RestoreSettings(method="interp").method_name == "interp"


def test_bad_settings_create_nothing(tmp_path):
    vol = Volume.from_array(np.zeros((4, 16, 16), np.float32), (2, 1, 1))
    with pytest.raises(SettingsError):
        restore(vol, None, tmp_path / "o.ome.zarr", RestoreSettings(method="interp", view="xy"), progress=False)
    assert not (tmp_path / "o.ome.zarr").exists()


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_settings_file_round_trip_and_precedence(tmp_path, suffix):
    s = {"adapt": AdaptSettings(n_patches=64, finetune={"iterations": 12}),
         "restore": RestoreSettings(method="rl", psf_sigma_um=(0.3, 0.1, 0.1), chunks=(32, 64, 64),
                                    region=(64, 128, 128))}
    path = tmp_path / f"s{suffix}"
    if suffix == ".yaml":
        path.write_text(dump_config(s))
    else:
        path.write_text('ssai3d_config = 1\n[adapt]\nn_patches = 64\n[adapt.finetune]\niterations = 12\n'
                        '[restore]\nchunks = [32, 64, 64]\nregion = [64, 128, 128]\n'
                        '[restore.method]\nname = "rl"\npsf_sigma_um = [0.3, 0.1, 0.1]\n')
    sections = read_config(path)
    assert AdaptSettings(**sections["adapt"]) == s["adapt"]
    assert RestoreSettings(**sections["restore"]) == s["restore"]
    # file < command line: --chunks wins, the rest comes from the file, the rest of the rest from the model
    res = CliRunner().invoke(main, ["run", "in.zarr", "out.zarr", "--config", str(path), "--chunks", "16", "64", "64",
                                    "--print-config"])
    assert res.exit_code == 2 and "use `ssai3d restore`" in res.output  # run restores with the adapted model
    res = CliRunner().invoke(main, ["restore", "in.zarr", "out.zarr", "--config", str(path), "--chunks", "16", "64",
                                    "64", "--rl-iterations", "9", "--print-config"])
    assert res.exit_code == 0, res.output
    import yaml

    eff = yaml.safe_load(res.output)["restore"]
    assert eff["chunks"] == [16, 64, 64] and eff["region"] == [64, 128, 128]
    assert eff["method"] == {"name": "rl", "psf_sigma_um": [0.3, 0.1, 0.1], "psf_file": None, "iterations": 9}
    assert eff["view"] == "mean"


def test_settings_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, phrase in [("ssai3d_config: 99\n", "format version 99"), ("restor: {}\n", "unknown section"),
                         ("restore: [1, 2]\n", "must be a mapping"), ("restore: {a: [\n", "cannot parse")]:
        bad.write_text(text)
        with pytest.raises(SettingsError, match=phrase):
            read_config(bad)
    res = CliRunner().invoke(main, ["restore", "a", "b", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "not found" in res.output


def test_one_error_type_reaches_the_user(capsys):
    @friendly_errors
    def user_error():
        raise SettingsError("bad --thing; use --other")

    @friendly_errors
    def bug():
        raise RuntimeError("boom")

    import click

    with pytest.raises(click.ClickException) as exc:
        user_error()
    assert exc.value.exit_code == 2 and str(exc.value.message) == "bad --thing; use --other"
    with pytest.raises(SystemExit) as done:
        bug()
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "bug in ssai3d-dask" in err


def test_public_api_is_complete_and_import_is_light():
    for name in ssai3d_dask.__all__:
        assert getattr(ssai3d_dask, name) is not None
    code = "import sys, ssai3d_dask, ssai3d_dask.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_model_folder_is_versioned_complete_and_checked(tmp_path):
    d = make_model_dir(tmp_path / "m", z_factor=2.0)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["format_version"] == FOLDER_VERSION and manifest["kind"] == "adapted"
    assert not list(d.glob(".*.tmp"))
    loaded = load_folder(d)
    assert loaded.z_factor == 2.0 and loaded.kind == "adapted"
    get_method("ssai3d").check_model(d)
    with pytest.raises(SettingsError, match="use --method ssai3d"):
        get_method("care").check_model(d)
    care = write_folder(tmp_path / "c", CareUNet(4, 2), ModelManifest("care", 2.0, Normalization(0.0, 1.0)))
    with pytest.raises(SettingsError, match="use --method care"):
        get_method("ssai3d").check_model(care)
    assert isinstance(load_folder(care).model, CareUNet)
    (d / "manifest.json").write_text(json.dumps(manifest | {"format_version": FOLDER_VERSION + 1}))
    with pytest.raises(CheckpointError, match="newer ssai3d-dask"):
        read_manifest(d)
    (d / "manifest.json").write_text(json.dumps(manifest | {"kind": "mystery"}))
    with pytest.raises(CheckpointError, match="kind 'mystery'"):
        load_folder(d)


def test_care_checkpoint_round_trip_is_exact(tmp_path):
    from ssai3d_dask.models.checkpoint import load_network, save_network

    torch.manual_seed(0)
    net = CareUNet(4, 2)
    for p in net.parameters():
        p.data.normal_()
    save_network(net, tmp_path / "u.pt", {"x": 1})
    back, manifest = load_network(tmp_path / "u.pt", expect="care-unet")
    assert manifest == {"x": 1}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    with pytest.raises(CheckpointError, match="where a nafnet was expected"):
        load_network(tmp_path / "u.pt", expect="nafnet")


def test_precision_and_compile_resolve_per_device(monkeypatch, caplog):
    import ssai3d_dask.models.precision as P
    from ssai3d_dask.restoration.pipeline import COMPILE_FROM_VOXELS, resolve_compile

    monkeypatch.setattr(P, "cpu_bf16_fast", lambda: True)
    assert P.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(P, "cpu_bf16_fast", lambda: False)
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    P._warn_slow_bf16.cache_clear()
    with caplog.at_level("WARNING"):
        assert P.resolve_precision("bf16", "cpu") == "bf16"  # asked for: done, with a warning that it is slow
    assert "emulated" in caplog.text
    monkeypatch.setattr(P, "cuda_bf16_fast", lambda device: False)
    with pytest.raises(SettingsError, match="no bf16 support"):
        P.resolve_precision("bf16", "cuda")
    assert P.resolve_precision("auto", "cuda") == "fp32"
    with pytest.raises(SettingsError, match="precision"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(SettingsError, match="precision"):
        RestoreSettings(precision="fp16")
    assert resolve_compile("auto", "cuda", COMPILE_FROM_VOXELS) == "on"
    assert resolve_compile("auto", "cuda", COMPILE_FROM_VOXELS - 1) == "off"
    assert resolve_compile("auto", "cpu", 10 * COMPILE_FROM_VOXELS) == "off"
    assert resolve_compile("on", "cpu", 1) == "on" and resolve_compile("off", "cuda", 2**40) == "off"
