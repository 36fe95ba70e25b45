"""The method registry: every method is registered once, dispatched only through the registry, and meets
the contract (its halo makes the result independent of the region); typed records round-trip and refuse a
newer version."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssai3d_dask.errors import CheckpointError, VolumeError
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume, open_volume
from ssai3d_dask.models.folder import KINDS, load_folder, write_folder
from ssai3d_dask.models.manifest import FOLDER_VERSION, InputRef, ModelManifest
from ssai3d_dask.models.unet import CareUNet
from ssai3d_dask.ops.denoise import Denoiser
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.restoration.methods import REGISTRY, get_method, method_for_kind
from ssai3d_dask.restoration.pipeline import prepare_restore, restore
from ssai3d_dask.restoration.records import RECORD_VERSION, Provenance, RunRecord, read_provenance
from ssai3d_dask.settings import METHOD_SETTINGS, METHODS, RestoreSettings

from .conftest import make_model_dir

PKG = Path(__file__).resolve().parents[1] / "ssai3d_dask"
Z = 4.0


def test_every_method_is_registered_once_with_its_settings_and_model_kind():
    assert tuple(REGISTRY) == METHODS  # the settings accept exactly the registered methods
    for name, method in REGISTRY.items():
        assert method.name == name and get_method(name) is method
        assert name in set(METHOD_SETTINGS) and method.settings_model is METHOD_SETTINGS[name]
        assert method.work_view("mean") in ("mean", "volume")
        assert method.default_workers(8) >= 1
    kinds = [m.folder_kind for m in REGISTRY.values() if m.uses_model]
    assert sorted(kinds) == sorted(KINDS)  # every model-folder kind has the one method that restores with it
    assert all(method_for_kind(k).folder_kind == k for k in KINDS)
    with pytest.raises(Exception, match="unknown method 'nope'"):
        get_method("nope")


def _method_name_comparisons(path: Path) -> list[str]:
    """Comparisons with a method's name (``x == "rl"``, ``x in ("care", "cyclegan")``). "ssai3d" is also the
    package's attribute key and command, so it counts only against something called method."""
    found, text = [], path.read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(operands):
                items = op.elts if isinstance(op, (ast.Tuple, ast.List, ast.Set)) else [op]
                names = {c.value for c in items if isinstance(c, ast.Constant) and c.value in METHODS}
                others = " ".join(ast.get_source_segment(text, o) or "" for j, o in enumerate(operands) if j != i)
                if names - {"ssai3d"} or (names and "method" in others):
                    found.append(f"{path.relative_to(PKG)}:{node.lineno}")
    return found


def test_no_method_is_named_in_a_comparison_outside_the_registry():
    allowed = {"settings", "evaluation"}  # the settings declare the names; the demo labels its table columns
    found = [hit for f in PKG.rglob("*.py") if f.relative_to(PKG).parts[0] not in allowed
             and "methods" not in f.relative_to(PKG).parts for hit in _method_name_comparisons(f)]
    assert not found, found


def _folder(kind: str, path: Path) -> Path | None:
    norm = Normalization(0.0, 1.0)
    if kind == "adapted":
        return make_model_dir(path, Z)
    torch.manual_seed(0)
    if kind == "care":
        return write_folder(path, CareUNet(4, 2), ModelManifest("care", Z, norm))
    from ssai3d_dask.adaptation.cyclegan import CycleGAN

    return write_folder(path, CycleGAN.build("small", 0).G.eval(), ModelManifest("cyclegan", Z, norm))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_restores_the_same_whatever_the_region(tmp_path, name):
    """The contract of :meth:`compute` with the method's own halo: the result does not depend on the region
    (to 1e-3 of its range; interpolation exactly), and it has the core's shape."""
    method = get_method(name)
    sim = simulate("strands", (32, 48, 40), seed=0, model=ForwardModel(0.5, 3.0, z_factor=Z))
    vol = Volume.from_array(sim.raw, (0.4, 0.1, 0.1), chunks=(3, 20, 30))
    model_dir = _folder(method.folder_kind, tmp_path / "model") if method.uses_model else None
    extra = {"psf_sigma_um": (0.2, 0.1, 0.1), "rl_iterations": 5} if name == "rl" else {}
    outs = []
    for region in [(16, 16, 16), (32, 48, 48)]:
        s = RestoreSettings(method=name, chunks=(16, 16, 16), region=region, dtype="float32", skip_empty=False,
                            **extra)
        job = prepare_restore(vol, model_dir, s)
        assert job.plan.halo[0] == method.halo(job.resources) and job.plan.halo[0] % 16 == 0
        out = tmp_path / f"{name}{region[1]}.ome.zarr"
        restore(vol, model_dir, out, s, progress=False)
        outs.append(open_volume(out).data.compute())
        assert read_provenance(out).method == name
    assert outs[0].shape == (int(round(sim.raw.shape[0] * Z)), 48, 40)
    scale = float(outs[0].max() - outs[0].min())
    assert scale > 0
    tol = 1e-6 if name == "interp" else 1e-3
    assert np.abs(outs[0] - outs[1]).max() <= tol * scale


def test_model_manifest_round_trips_and_refuses_a_newer_version(tmp_path):
    m = ModelManifest("adapted", 2.5, Normalization(10.0, 900.0, foreground_threshold=0.1), Denoiser(0.05, 0.02, "on"),
                      input=InputRef("a.tif", (10, 20, 30), (1.0, 0.4, 0.4)), settings={"seed": 1},
                      history={"steps": 3}, pool_window_px=48, reach={"reach_px": 96},
                      extra={"selection": {"layers": ["a"]}})
    d = json.loads(json.dumps(m.to_dict()))  # what manifest.json holds
    assert d["format_version"] == FOLDER_VERSION and d["selection"] == {"layers": ["a"]}  # flat on disk
    assert ModelManifest.from_dict(d) == m
    with pytest.raises(CheckpointError, match="newer ssai3d-dask"):
        ModelManifest.from_dict(d | {"format_version": FOLDER_VERSION + 1})
    with pytest.raises(CheckpointError, match="not a model manifest"):
        ModelManifest.from_dict({"kind": "adapted"})
    with pytest.raises(ValueError, match="hide typed fields"):
        m.replace(extra={"kind": "x"}).to_dict()
    folder = make_model_dir(tmp_path / "m", 2.0, denoise_h=0.05)
    loaded = load_folder(folder)
    assert loaded.manifest.denoiser.enabled and loaded.z_factor == 2.0 and loaded.norm.foreground_threshold == 0.1


def test_run_record_and_provenance_round_trip_and_refuse_a_newer_version(tmp_path):
    sim = simulate("strands", (8, 32, 32), seed=0, model=ForwardModel(0.5, 3.0, z_factor=2.0))
    vol = Volume.from_array(sim.raw, (0.2, 0.1, 0.1))
    out = restore(vol, None, tmp_path / "o.ome.zarr", RestoreSettings(method="interp", chunks=(16, 16, 16)),
                  progress=False)
    prov = read_provenance(out)
    assert prov.method == "interp" and prov.input.shape == sim.raw.shape and prov.record_version == RECORD_VERSION
    assert Provenance.from_dict(json.loads(json.dumps(prov.to_dict()))) == prov
    run = RunRecord.from_dict(json.loads((out / ".ssai3d" / "run.json").read_text()))
    assert run.method == "interp" and run.input.voxel_size_um == (0.2, 0.1, 0.1) and run.halo == 0
    assert RunRecord.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    with pytest.raises(VolumeError, match="newer ssai3d-dask"):
        Provenance.from_dict(prov.to_dict() | {"record_version": RECORD_VERSION + 1})
    with pytest.raises(VolumeError, match="no ssai3d provenance"):
        import zarr

        zarr.open_group(str(tmp_path / "bare.zarr"), mode="w")
        read_provenance(tmp_path / "bare.zarr")
