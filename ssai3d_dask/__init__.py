"""ssai3d-dask: isotropic 3D resolution from a single anisotropic stack, out of core.

The public API (imported on first use, so ``import ssai3d_dask`` and the CLI start fast)::

    from ssai3d_dask import open_volume, AdaptSettings, RestoreSettings, adapt, restore, run

    vol = open_volume("stack.ome.zarr")                  # lazy, voxel size from the metadata
    run(vol, "restored.ome.zarr")                        # adapt the shipped model, then restore
    # or step by step:
    adapt(vol, "stack.model", AdaptSettings(finetune={"iterations": 300}))
    restore(vol, "stack.model", "restored.ome.zarr", RestoreSettings(chunks=(64, 128, 128)))

Settings files: :func:`read_config` / :func:`dump_config`. Every user-facing error is an
:class:`Ssai3dError`.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ssai3d-dask")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: public name -> module that defines it
_API = {
    "open_volume": "ssai3d_dask.io.volume",
    "Volume": "ssai3d_dask.io.volume",
    "open_dataset": "ssai3d_dask.io.dataset",
    "Dataset": "ssai3d_dask.io.dataset",
    "adapt": "ssai3d_dask.adaptation.adapt",
    "adapt_dataset": "ssai3d_dask.adaptation.adapt",
    "train_care": "ssai3d_dask.adaptation.care",
    "train_cyclegan": "ssai3d_dask.adaptation.cyclegan",
    "restore": "ssai3d_dask.restoration.pipeline",
    "run": "ssai3d_dask.workflow",
    "simulate": "ssai3d_dask.evaluation.simulate",
    "load_model_folder": "ssai3d_dask.models.folder",
    "read_provenance": "ssai3d_dask.restoration.records",
    "ModelManifest": "ssai3d_dask.models.manifest",
    "AdaptSettings": "ssai3d_dask.settings",
    "FinetuneSettings": "ssai3d_dask.settings",
    "CareSettings": "ssai3d_dask.settings",
    "CycleGANSettings": "ssai3d_dask.settings",
    "PretrainSettings": "ssai3d_dask.settings",
    "RestoreSettings": "ssai3d_dask.settings",
    "read_config": "ssai3d_dask.settings",
    "dump_config": "ssai3d_dask.settings",
    "Ssai3dError": "ssai3d_dask.errors",
}
_RENAMED = {"load_model_folder": "load_folder"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(_API[name]), _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssai3d_dask' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
