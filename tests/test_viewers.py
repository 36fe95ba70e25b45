"""Outputs open in the viewers our users use.

The neuroglancer state (`ssai3d view`) is checked everywhere. The viewer checks proper (marked ``viewer``)
need the viewers: neuroglancer's Python package with selenium and a headless Chromium, and napari with
napari-ome-zarr and an X display (Xvfb). They skip, saying what is missing, where those are absent;
``python examples/viewer_check.py`` installs them and runs these tests, keeping the screenshots.
"""

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ssai3d_dask.cli import main
from ssai3d_dask.io.viewers import XZ_Z_DOWN, YZ_Z_DOWN, neuroglancer_state, serve


@pytest.fixture(scope="module", params=["0.5", "0.4"])
def restored(request, tmp_path_factory):
    """A small restored output (beads, dz/dx = 2, interp) in NGFF 0.5 (zarr v3) or 0.4 (zarr v2)."""
    d = tmp_path_factory.mktemp(f"view{request.param}")
    runner = CliRunner()
    res = runner.invoke(main, ["-q", "simulate", "beads", str(d / "sim"), "--shape", "32", "96", "96",
                               "--anisotropy", "2", "--dtype", "uint16"])
    assert res.exit_code == 0, res.output
    out = d / "restored.ome.zarr"
    res = runner.invoke(main, ["-q", "restore", str(d / "sim" / "raw.ome.zarr"), str(out), "--method", "interp",
                               "--chunks", "16", "32", "32", "--region", "32", "96", "96", "--ngff-version",
                               request.param, "--workers", "1"])
    assert res.exit_code == 0, res.output
    return out


def _omero_window(out: Path) -> dict:
    meta = out / ("zarr.json" if (out / "zarr.json").exists() else ".zattrs")
    attrs = json.loads(meta.read_text())
    attrs = attrs.get("attributes", attrs)
    return attrs.get("ome", attrs)["omero"]["channels"][0]["window"]


def test_view_prints_a_state_with_contrast_voxel_size_and_z_vertical(restored):
    res = CliRunner().invoke(main, ["view", str(restored)])
    assert res.exit_code == 0, res.output
    url = res.output.strip().splitlines()[0]
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    state = json.loads(urllib.parse.unquote(url.split("#!", 1)[1]))
    layer = state["layers"][0]
    scheme = "zarr3" if (restored / "zarr.json").exists() else "zarr"
    assert layer["source"] == f"{scheme}://http://127.0.0.1:8000/restored.ome.zarr"
    win = _omero_window(restored)
    assert layer["shaderControls"]["normalized"]["range"] == [win["start"], win["end"]]
    assert state["dimensions"] == {ax: [pytest.approx(0.1e-6), "m"] for ax in "zyx"}
    assert state["displayDimensions"] == ["x", "y", "z"]
    axial = state["layout"]["children"][1]["children"]
    assert [p["crossSectionOrientation"]["value"] for p in axial] == [XZ_Z_DOWN, YZ_Z_DOWN]


def test_view_serves_the_output_with_cors(restored):
    import urllib.request

    server = serve(restored.parent, 0)
    try:
        port = server.server_address[1]
        name = "zarr.json" if (restored / "zarr.json").exists() else ".zattrs"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{restored.name}/{name}") as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "multiscales" in r.read().decode()
    finally:
        server.shutdown()


def _missing(*modules: str, programs: tuple[str, ...] = ()) -> str | None:
    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    gone += [p for p in programs if shutil.which(p) is None]
    return f"needs {', '.join(gone)} (python examples/viewer_check.py installs them)" if gone else None


def _screenshot_dir() -> Path | None:
    d = os.environ.get("SSAI3D_SCREENSHOTS")
    return Path(d) if d else None


@pytest.mark.viewer
def test_neuroglancer_loads_the_output_without_error_and_draws_it(restored):
    why = _missing("neuroglancer", "selenium", programs=("chromium", "chromedriver"))
    if why:
        pytest.skip(why)
    import neuroglancer
    import neuroglancer.webdriver
    from PIL import Image

    server = serve(restored.parent, 0)
    state = neuroglancer_state(restored, f"http://127.0.0.1:{server.server_address[1]}/{restored.name}")
    neuroglancer.set_server_bind_address("127.0.0.1")
    viewer = neuroglancer.Viewer()  # serves its own client: no internet needed
    viewer.set_state(neuroglancer.ViewerState(state))
    wd = neuroglancer.webdriver.Webdriver(
        viewer, headless=True, browser="chrome", window_size=(1000, 900),
        extra_command_line_args=["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])
    try:
        # The screenshot waits until every visible chunk has loaded; a chunk that fails to load would make
        # it wait forever, so it runs in a daemon thread with a deadline.
        result: dict = {}

        def take() -> None:
            result["image"] = viewer.screenshot(size=(1000, 900)).screenshot.image

        worker = threading.Thread(target=take, daemon=True)
        worker.start()
        worker.join(120)
        shot = result.get("image")
        log = wd.driver.get_log("browser")
        assert shot is not None, f"neuroglancer did not finish drawing within 120 s: {[e['message'] for e in log][-5:]}"
        img = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), np.float32)
        # neuroglancer probes for the metadata files of both zarr versions and of arrays: those 404s are normal
        probes = ("favicon", "/.zarray ", "/.zgroup ", "/.zattrs ", "/zarr.json ", "/.zmetadata ")
        errors = [e["message"] for e in log if e["level"] == "SEVERE"
                  and not (any(p in e["message"] for p in probes) and "404" in e["message"])]
        dims = viewer.state.to_json()["dimensions"]
    finally:
        wd.driver.quit()
        server.shutdown()
    assert not errors, errors
    assert dims == {ax: [pytest.approx(0.1e-6), "m"] for ax in "zyx"}
    # Each of the three panels shows data: bright beads on a dark volume, not a uniform background.
    for panel in (img[:440], img[460:, :490], img[460:, 510:]):
        assert panel.std() > 10 and panel.max() > 150, "a panel is blank"
    if _screenshot_dir():
        _screenshot_dir().mkdir(parents=True, exist_ok=True)
        (_screenshot_dir() / f"neuroglancer-{restored.parent.name}.png").write_bytes(shot)


NAPARI_SCRIPT = """
import json, sys
import napari
viewer = napari.Viewer(show=True)  # under Xvfb: the canvas draws only when shown
layers = viewer.open(sys.argv[1], plugin="napari-ome-zarr")
layer = layers[0]
out = {"scale": [float(s) for s in layer.scale], "contrast_limits": [float(c) for c in layer.contrast_limits],
       "multiscale": bool(layer.multiscale), "levels": len(layer.data) if layer.multiscale else 1,
       "units": [str(u) for u in getattr(layer, "units", [])]}
if len(sys.argv) > 2:
    viewer.dims.current_step = tuple(n // 2 for n in layer.data[0].shape)  # the middle plane
    viewer.reset_view()
    napari.qt.get_qapp().processEvents()
    shot = viewer.screenshot(sys.argv[2], canvas_only=True, flash=False)
    out["screenshot_std"] = float(shot[..., :3].std())
print(json.dumps(out))
viewer.close()
"""


@pytest.mark.viewer
def test_napari_reads_scale_units_and_contrast_from_the_metadata(restored, tmp_path):
    why = _missing("napari", "napari_ome_zarr", programs=("xvfb-run",))
    if why:
        pytest.skip(why)
    script = tmp_path / "napari_check.py"
    script.write_text(NAPARI_SCRIPT)
    shot = (_screenshot_dir() or tmp_path) / f"napari-{restored.parent.name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="xcb")  # Qt's offscreen platform has no OpenGL for napari's canvas
    res = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, str(script),
                          str(restored), str(shot)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["scale"] == pytest.approx([0.1, 0.1, 0.1])
    assert got["multiscale"] and got["levels"] >= 2
    win = _omero_window(restored)
    assert got["contrast_limits"] == pytest.approx([win["start"], win["end"]])
    if got["units"]:
        assert all("micrometer" in u for u in got["units"])
    assert got["screenshot_std"] > 5, "napari drew a blank canvas"
