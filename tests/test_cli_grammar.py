"""One grammar for every command: inputs and outputs positional, the model is --model, --channel/--time take
one selection syntax, --json means one thing, devices default to auto, flags spell the settings keys, help in
sections, and former spellings keep working for one release with a warning."""

import json

import click
import pytest
from click.testing import CliRunner

from ssai3d_dask.cli import main
from ssai3d_dask.settings import SECTIONS, RestoreSettings

USAGE = {"adapt": "PATH MODEL_DIR", "train-care": "PATH MODEL_DIR", "train-cyclegan": "PATH MODEL_DIR",
         "restore": "PATH OUT", "run": "PATH OUT", "demo": "[OUT]", "info": "PATH", "pretrain": "OUT"}


def _run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.mark.parametrize("command", sorted(USAGE))
def test_inputs_and_outputs_are_positional(command):
    res = _run(command, "--help")
    assert res.exit_code == 0 and f"[OPTIONS] {USAGE[command]}" in res.output
    assert "--out " not in res.output and "--model-dir" not in res.output  # former spellings are hidden


def test_flags_spell_the_settings_keys_and_devices_default_to_auto():
    flat = {"rl_iterations"}  # RestoreSettings takes the Richardson-Lucy iterations flat, beside --method
    for name, command in main.commands.items():
        for p in command.params:
            if isinstance(p, click.Option) and p.name.startswith("opt__") and not p.hidden:
                leaf = p.name.split("__")[-1]
                flag = p.opts[0]
                assert flag == "--" + leaf.replace("_", "-") or flag[2:].replace("-", "_") in flat, (name, flag)
            if p.name in ("opt__device", "opt__finetune__device"):
                assert "[default: auto]" in p.help, name
    for section in SECTIONS.values():
        for field, info in section.model_fields.items():
            if field == "device":
                assert info.default == "auto", section
    assert RestoreSettings(rl_iterations=3, method="rl", psf_sigma_um=(1, 1, 1)).method.iterations == 3


def test_restore_help_is_grouped_into_sections():
    out = _run("restore", "--help").output
    heads = [h for h in ("Input:", "Output:", "Method:", "Compute:", "Cluster:", "Settings file:") if h in out]
    assert len(heads) == 6 and sorted(heads, key=out.index) == heads
    assert out.index("--voxel-size") < out.index("Output:") < out.index("--chunks") < out.index("Method:")
    assert out.index("Cluster:") < out.index("--cluster") and "--scheduler" not in out


def test_former_spellings_still_work_with_a_warning(tmp_path):
    res = _run("adapt", "in.tif", "--out", tmp_path / "m", "--patches", "16", "--sigmas", "3,4", "--print-config")
    assert res.exit_code == 0, res.output
    assert "n_patches: 16" in res.stdout and "sigmas_px: [3.0, 4.0]" in res.stdout
    assert "--out is deprecated" in res.stderr and "use MODEL_DIR" in res.stderr
    assert "--patches is deprecated" in res.stderr and "use --n-patches" in res.stderr
    res = _run("restore", "in.tif", "o.zarr", "--method", "rl", "--psf", "p.npy", "--no-shards", "--print-config")
    assert res.exit_code == 0, res.output
    assert "sharding: false" in res.stdout and "psf_file: p.npy" in res.stdout
    assert "use --psf-file" in res.stderr and "use --no-sharding" in res.stderr
    res = _run("train-cyclegan", "in.tif", "--out", "m", "--volume", "32", "--volumes", "8", "--print-config")
    assert res.exit_code == 0 and "volume_px: 32" in res.stdout and "n_volumes: 8" in res.stdout
    res = _run("train-care", "in.tif", "m", "--unet-base", "8", "--psf-sigma-um", "1", "1", "1", "--print-config")
    assert res.exit_code == 0 and "base: 8" in res.stdout


def test_former_and_new_spelling_together_or_neither_is_an_error(tmp_path):
    res = _run("adapt", "in.tif", "m", "--out", "m2", "--print-config")
    assert res.exit_code == 2 and "former spelling of MODEL_DIR" in res.output
    res = _run("run", "in.tif", "o.zarr", "--model", "a", "--model-dir", "b")
    assert res.exit_code == 2 and "former spelling of --model" in res.output
    res = _run("adapt", "in.tif", "--print-config")
    assert res.exit_code == 2 and "Missing argument 'MODEL_DIR'" in res.output
    res = _run("restore", "in.tif", "o.zarr", "--n-patches", "3")
    assert res.exit_code == 2 and "No such option" in res.output


def test_channel_and_time_take_one_syntax(tmp_path):
    res = _run("info", "in.tif", "--channel", "0,2")
    assert res.exit_code == 2 and "works on one channel" in res.output and "restore, run and adapt" in res.output
    res = _run("train-care", "in.tif", "m", "--time", "all", "--psf-sigma-um", "1", "1", "1")
    assert res.exit_code == 2 and "works on one time" in res.output


def test_json_prints_or_writes_the_same_record(tmp_path):
    sim = tmp_path / "sim"
    assert _run("simulate", "beads", sim, "--shape", "16", "32", "32", "--anisotropy", "2").exit_code == 0
    printed = _run("info", sim / "raw.ome.zarr", "--json")
    assert printed.exit_code == 0, printed.output
    written = _run("info", sim / "raw.ome.zarr", "--json", tmp_path / "info.json")
    assert written.exit_code == 0 and "anisotropy" in written.stdout  # the text, and the file beside it
    assert json.loads(printed.stdout) == json.loads((tmp_path / "info.json").read_text())
    ev = _run("evaluate", sim / "truth.ome.zarr", "--truth", sim / "truth.ome.zarr", "--json")
    assert ev.exit_code == 0 and json.loads(ev.stdout)["prediction"]["ssim"] == pytest.approx(1.0)


def test_a_closed_pipe_is_not_reported_as_a_bug(tmp_path):
    import subprocess
    import sys

    sim = tmp_path / "sim"
    assert _run("simulate", "beads", sim, "--shape", "16", "32", "32", "--anisotropy", "2").exit_code == 0
    res = subprocess.run(f"{sys.executable} -m ssai3d_dask.cli info {sim / 'raw.ome.zarr'} | head -1", shell=True,
                         capture_output=True, text=True, timeout=120)
    assert "path:" in res.stdout and "bug" not in res.stderr and "Traceback" not in res.stderr
