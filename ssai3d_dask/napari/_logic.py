"""What the napari widget runs, without Qt: adapt (or not) and restore an image layer's data into a
multiscale OME-Zarr, reporting progress and stopping when asked."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ssai3d_dask.errors import Interrupted, SettingsError
from ssai3d_dask.progress import Bar, Progress


class _Bar(Bar):
    def __init__(self, owner: CancellableProgress, desc: str, total: int, initial: int):
        self.owner, self.desc, self.total, self.done = owner, desc, total, initial
        owner.report(desc, initial, total)

    def update(self, n: int = 1) -> None:
        if self.owner.cancelled.is_set():
            raise Interrupted(f"cancelled during {self.desc}")
        self.done += n
        self.owner.report(self.desc, self.done, self.total)


class CancellableProgress(Progress):
    """Forwards every loop's progress to ``report(desc, done, total)`` (the widget's progress bar, from the
    worker thread) and stops the run at the next step once :meth:`cancel` was called: the step raises
    :class:`~ssai3d_dask.errors.Interrupted`, so an adaptation keeps its resume checkpoint and a restoration
    its finished regions, as after SIGTERM."""

    def __init__(self, report: Callable[[str, int, int], None] | None = None):
        self.report = report or (lambda desc, done, total: None)
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def bar(self, desc: str, total: int, initial: int = 0, unit: str = "it") -> Bar:
        if self.cancelled.is_set():
            raise Interrupted(f"cancelled before {desc}")
        return _Bar(self, desc, total, initial)


def restore_layer_data(data, voxel_size_um: Sequence[float], out: str | Path | None = None, method: str = "ssai3d",
                       iterations: int | None = None, progress: Progress | None = None):
    """Restore one 3D image (a layer's data: numpy or dask, (z, y, x)) with voxel size ``voxel_size_um``
    into the OME-Zarr ``out`` (default: a new temporary folder); ``method="ssai3d"`` first adapts the shipped
    model to it (``iterations`` fine-tuning steps, default the adaptation's), writing the model beside ``out``.

    Returns ``(levels, out_voxel_um, out)``: the output's pyramid levels as lazy dask arrays (what napari
    shows as one multiscale layer, so a volume larger than memory is never loaded), its voxel size and path.
    """
    from ssai3d_dask.adaptation.adapt import adapt
    from ssai3d_dask.io.volume import Volume, open_volume
    from ssai3d_dask.restoration.methods import get_method
    from ssai3d_dask.restoration.pipeline import restore
    from ssai3d_dask.settings import DEFAULT_METHOD, AdaptSettings, FinetuneSettings, RestoreSettings

    if getattr(data, "ndim", 0) != 3:
        raise SettingsError(f"the layer is {getattr(data, 'ndim', '?')}D; choose a 3D (z, y, x) image layer "
                            f"(one channel and time point)")
    vol = Volume.from_array(data, tuple(float(v) for v in voxel_size_um), source="napari layer")
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="ssai3d-napari-")) / "restored.ome.zarr"
    model_dir, kind = None, get_method(method)
    if kind.uses_model and method != DEFAULT_METHOD:
        raise SettingsError(f"--method {method} restores with a model trained beforehand (`ssai3d train-{method}`); "
                            f"in napari choose {DEFAULT_METHOD} (adapted here) or a method without a model")
    if kind.uses_model:  # adapt the shipped model to this image first, as `ssai3d run` does
        model_dir = Path(str(out) + ".model")
        ft = FinetuneSettings(**({"iterations": int(iterations)} if iterations else {}))
        adapt(vol, model_dir, AdaptSettings(finetune=ft), progress=progress, overwrite=True)
    # regions run here, read, computed and written overlapped (the layer's array lives in this process)
    restore(vol, model_dir, out, RestoreSettings(method=method), overwrite=True, progress=progress)
    levels = [open_volume(out, level=i).data for i in range(_n_levels(out))]
    return levels, open_volume(out).voxel_size_um, out


def _n_levels(out: Path) -> int:
    from ssai3d_dask.io.volume import open_zarr_node, read_multiscales

    return len(read_multiscales(open_zarr_node(str(out)))["datasets"])


def neuroglancer_link(out: str | Path, server=None):
    """A neuroglancer URL for the result ``out`` (what ``ssai3d view --serve`` prints): its folder served on
    127.0.0.1 (``server``, started once and reused), one layer with the output's contrast, XY over XZ/YZ.
    Returns ``(url, server)``."""
    from urllib.parse import quote

    from ssai3d_dask.io.viewers import DEFAULT_VIEWER, neuroglancer_state, neuroglancer_url, serve

    out = Path(out).resolve()
    server = server or serve(out.parent)
    data = f"http://127.0.0.1:{server.server_address[1]}/{quote(out.name)}"
    return neuroglancer_url(neuroglancer_state(out, data), DEFAULT_VIEWER), server
