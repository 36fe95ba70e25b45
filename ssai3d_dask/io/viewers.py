"""Opening outputs in viewers: a neuroglancer state and URL for an OME-Zarr, and a local CORS server.

Neuroglancer reads OME-Zarr (v2 and v3) over HTTP and takes voxel sizes from the NGFF metadata. What it
cannot know is our display choices: the contrast (taken from the output's omero window) and where z goes.
Its standard 4-panel layout shows z horizontally in the YZ panel; for an isotropic restoration the axial
panels are the point, so :func:`neuroglancer_state` puts z vertical in both (XZ and YZ side by side,
under XY), each an unlinked-orientation panel of the same layer.
"""

from __future__ import annotations

import functools
import io
import json
import math
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import zarr

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.volume import checked_datasets, ngff_voxel_size_um, read_multiscales

#: A public neuroglancer client; any other (or a local one) can be given instead.
DEFAULT_VIEWER = "https://neuroglancer-demo.appspot.com"
_H = math.sqrt(0.5)
#: Cross-section orientations (quaternions x, y, z, w over the display axes x, y, z) of panels that look
#: along y and along x with z pointing down the screen: right = x, down = z; and right = y, down = z.
XZ_Z_DOWN = [_H, 0.0, 0.0, _H]
YZ_Z_DOWN = [0.5, 0.5, 0.5, 0.5]
SHADER = "#uicontrol invlerp normalized\nvoid main() {\n  emitGrayscale(normalized());\n}\n"


def _metadata(path: Path) -> tuple[dict, dict, int]:
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for what is not a group
        raise VolumeError(f"{path} is not an OME-Zarr group ({str(exc).splitlines()[0]})") from None
    ms = read_multiscales(group)
    if ms is None:
        raise VolumeError(f"{path} has no OME-Zarr multiscales metadata; viewers need an OME-Zarr image")
    checked_datasets(path, group, ms)
    attrs = group.attrs.asdict()
    omero = attrs.get("ome", attrs).get("omero") or {}
    return ms, omero, group.metadata.zarr_format


def neuroglancer_state(path: str | Path, data_url: str) -> dict:
    """A neuroglancer state showing the OME-Zarr at ``path``, which a browser reads from ``data_url``.

    The layer's contrast is the omero window of the first channel; the layout is XY on top and, below it,
    XZ and YZ with z vertical.
    """
    path = Path(path)
    ms, omero, zarr_format = _metadata(path)
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    channels = omero.get("channels") or [{}]
    window = channels[0].get("window") or {}
    scheme = "zarr3" if zarr_format == 3 else "zarr"
    name = path.name.removesuffix(".zarr").removesuffix(".ome") or "image"
    layer = {"type": "image", "name": name, "source": f"{scheme}://{data_url.rstrip('/')}", "shader": SHADER}
    if "start" in window and "end" in window and window["end"] > window["start"]:
        layer["shaderControls"] = {"normalized": {"range": [window["start"], window["end"]]}}

    def panel(orientation: list[float] | None) -> dict:
        viewer = {"type": "viewer", "layers": [name], "layout": "xy"}
        if orientation is not None:
            viewer["crossSectionOrientation"] = {"link": "unlinked", "value": orientation}
        return viewer

    state = {"layers": [layer], "selectedLayer": {"layer": name}, "layout": {"type": "column", "children": [
        panel(None),
        {"type": "row", "children": [panel(XZ_Z_DOWN), panel(YZ_Z_DOWN)]},
    ]}}
    ds = ms["datasets"][0]
    voxel_um = ngff_voxel_size_um(path, ms, ds, ms.get("axes", []))
    if set(voxel_um) == set("zyx"):
        # The coordinate space up front (else it is known only once the data loads, too late for the display
        # dimensions to refer to it): level-0 voxel sizes in metres.
        state["dimensions"] = {ax: [um * 1e-6, "m"] for ax, um in voxel_um.items()}
        state["displayDimensions"] = ["x", "y", "z"]
    # Zoom so that the largest extent spans about 450 screen pixels (1 = one level-0 voxel per pixel).
    shape = zarr.open_array(str(path / ds["path"]), mode="r").shape
    state["crossSectionScale"] = max(n for ax, n in zip(axes, shape) if ax in "zyx") / 450
    return state


def neuroglancer_url(state: dict, viewer: str = DEFAULT_VIEWER) -> str:
    return f"{viewer.rstrip('/')}/#!{quote(json.dumps(state, separators=(',', ':')), safe='')}"


class _CORSHandler(SimpleHTTPRequestHandler):
    """Static files with the CORS header a viewer on another origin needs, and byte ranges (a zarr v3
    reader fetches a shard's index with a suffix range, then each chunk with a range); quiet logs."""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def send_head(self):
        spec = self.headers.get("Range", "")
        path = Path(self.translate_path(self.path))
        if not spec.startswith("bytes=") or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, _, last = spec[6:].split(",")[0].strip().partition("-")
        if first:
            start, stop = int(first), min(int(last) + 1 if last else size, size)
        else:
            start, stop = max(size - int(last), 0), size
        if start >= size or start >= stop:
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(stop - start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        return io.BytesIO(body)

    def do_OPTIONS(self) -> None:  # noqa: N802  (http.server's naming)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def serve(folder: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """Serve ``folder`` read-only on 127.0.0.1 (``port`` 0: any free one) in a background thread.

    Returns the server; ``server.server_address[1]`` is the port, ``server.shutdown()`` stops it.
    """
    handler = functools.partial(_CORSHandler, directory=str(Path(folder).resolve()))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise VolumeError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror}); choose another --port") from None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
