"""The whole job in one call: adapt the base model to a stack, then restore the stack (``ssai3d run``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ssai3d_dask.progress import ProgressLike
from ssai3d_dask.adaptation.adapt import adapt_dataset
from ssai3d_dask.errors import SettingsError
from ssai3d_dask.io.dataset import Dataset, dataset_from_volume, open_dataset
from ssai3d_dask.io.lock import RunLock
from ssai3d_dask.io.omezarr import check_output
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.models.folder import MODEL_FILE
from ssai3d_dask.settings import DEFAULT_METHOD
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import AdaptSettings, RestoreSettings

logger = logging.getLogger(__name__)


def default_model_dir(out: str | Path) -> Path:
    """Where ``run`` keeps the adapted model: OUT with ``.model`` appended."""
    return Path(str(out).rstrip("/") + ".model")


def run(source: str | Path | Volume | Dataset, out: str | Path, model_dir: str | Path | None = None,
        adapt_settings: AdaptSettings | None = None, restore_settings: RestoreSettings | None = None, *,
        voxel_size_um: Sequence[float] | None = None, channels=None, times=None, adapt_per_time: bool = False,
        overwrite: bool = False, resume: bool = False, client=None, progress: ProgressLike = None) -> Path:
    """Adapt the base model to ``source`` (one model per channel), then restore ``source`` into ``out``.

    Parameters
    ----------
    source : path, Volume or Dataset
        A path is opened lazily with ``voxel_size_um``, ``channels`` and ``times`` (see
        :func:`~ssai3d_dask.io.dataset.open_dataset`).
    model_dir : path, optional
        Where the adapted model goes (default: OUT.model).
    resume : bool
        Finish an interrupted run: an existing adapted model is reused and only missing regions are computed.

    Returns
    -------
    Path
        The output path.

    Notes
    -----
    The output and the model folder are checked against the input before anything is adapted, so a wrong
    path fails in a second, not after the adaptation.
    """
    adapt_settings = adapt_settings or AdaptSettings()
    restore_settings = restore_settings or RestoreSettings()
    if restore_settings.method.name != DEFAULT_METHOD:
        raise SettingsError(f"run adapts an SSAI-3D model; for --method {restore_settings.method.name} use "
                            f"`ssai3d restore` (after `ssai3d train-care` or `ssai3d train-cyclegan`)")
    if isinstance(source, Dataset):
        ds = source
    elif isinstance(source, Volume):
        ds = dataset_from_volume(source)
    else:
        ds = open_dataset(source, voxel_size_um, channels, times)
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir(out)
    check_output(out, overwrite, resume, [ds.source])
    check_output(model_dir, True, True, [ds.source])
    with RunLock(out):  # held from the adaptation on: a second run of the same command is refused at once
        if resume and any(model_dir.glob(f"**/{MODEL_FILE}")):
            logger.info("resuming with the adapted model in %s", model_dir)
        else:
            adapt_dataset(ds, model_dir, adapt_settings, per_time=adapt_per_time, overwrite=True, progress=progress)
        return restore(ds, model_dir, out, restore_settings, overwrite=overwrite, resume=resume, client=client,
                       progress=progress)
