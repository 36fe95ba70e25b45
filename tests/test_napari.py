"""The napari plugin: what the widget runs (restore a layer's data into a multiscale OME-Zarr, progress,
cancel) tested without Qt; the dock widget itself with napari's viewer fixture where napari and a display
(Xvfb) are available."""

import importlib.util
import os

import numpy as np
import pytest
import yaml

from ssai3d_dask.errors import Interrupted, SettingsError
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.volume import Volume, open_volume
from ssai3d_dask.napari import CancellableProgress, restore_layer_data
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings


def _raw():
    return simulate("strands", (32, 48, 48), seed=1, model=ForwardModel(0.5, 3.0, z_factor=4.0)).raw


def test_a_layer_restores_to_a_multiscale_result_with_its_physical_scale(tmp_path):
    raw = _raw()
    events = []
    levels, voxel, out = restore_layer_data(raw, (0.4, 0.1, 0.1), tmp_path / "l.ome.zarr", method="interp",
                                            progress=CancellableProgress(lambda *e: events.append(e)))
    assert voxel == (0.1, 0.1, 0.1) and levels[0].shape == (32, 48, 48) and len(levels) >= 1
    restore(Volume.from_array(raw, (0.4, 0.1, 0.1)), None, tmp_path / "ref.ome.zarr",
            RestoreSettings(method="interp"), progress=False)
    np.testing.assert_array_equal(levels[0].compute(), open_volume(tmp_path / "ref.ome.zarr").data.compute())
    assert events and events[-1][1] == events[-1][2]  # the last report: every region done
    import json
    import urllib.parse
    import urllib.request

    from ssai3d_dask.napari import neuroglancer_link

    url, server = neuroglancer_link(out)
    try:
        state = json.loads(urllib.parse.unquote(url.split("#!", 1)[1]))
        served = state["layers"][0]["source"].split("://", 1)[1]  # zarr3://http://127.0.0.1:PORT/NAME
        with urllib.request.urlopen(served.rstrip("/") + "/zarr.json", timeout=10) as r:
            assert json.loads(r.read())["node_type"] == "group"  # the result, served for neuroglancer
    finally:
        server.shutdown()
    with pytest.raises(SettingsError, match="choose a 3D"):
        restore_layer_data(raw[0], (0.1, 0.1), method="interp")


def test_cancel_stops_at_the_next_step_and_leaves_a_resumable_output(tmp_path):
    progress = CancellableProgress()
    steps = []

    def report(desc, done, total):  # cancel as soon as the regions' bar appears
        steps.append(done)
        progress.cancel()

    progress.report = report
    with pytest.raises(Interrupted, match="cancelled"):
        restore_layer_data(_raw(), (0.4, 0.1, 0.1), tmp_path / "c.ome.zarr", method="interp", progress=progress)
    assert steps == [0]  # stopped at the first step
    assert (tmp_path / "c.ome.zarr" / ".ssai3d").exists()  # the output stays, resumable


def test_the_manifest_names_the_widget():
    import ssai3d_dask.napari as plugin

    manifest = yaml.safe_load(open(os.path.join(os.path.dirname(plugin.__file__), "napari.yaml")))
    command = manifest["contributions"]["commands"][0]
    assert command["python_name"] == "ssai3d_dask.napari._widget:RestoreWidget"
    assert manifest["contributions"]["widgets"][0]["command"] == command["id"]


NO_NAPARI = not all(importlib.util.find_spec(m) for m in ("napari", "pytestqt", "qtpy"))


@pytest.mark.skipif(NO_NAPARI, reason="needs napari and pytest-qt: pip install 'ssai3d-dask[napari]' pytest-qt "
                                      "(without a display Qt runs offscreen)")
def test_the_dock_widget_adds_the_isotropic_layer(make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch):
    if not os.environ.get("DISPLAY"):
        monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    viewer = make_napari_viewer_proxy()
    viewer.add_image(_raw(), scale=(0.4, 0.1, 0.1), name="stack")
    from ssai3d_dask.napari._widget import RestoreWidget

    widget = RestoreWidget(viewer)
    assert widget.layer.currentText() == "stack" and [b.value() for b in widget.voxel] == [0.4, 0.1, 0.1]
    widget.method.setCurrentText("interp")
    widget.out.setText(str(tmp_path / "w.ome.zarr"))
    widget.start()
    qtbot.waitUntil(lambda: "stack isotropic" in [lay.name for lay in viewer.layers], timeout=120_000)
    result = viewer.layers["stack isotropic"]
    assert tuple(result.scale) == (0.1, 0.1, 0.1) and widget.run_button.isEnabled()
