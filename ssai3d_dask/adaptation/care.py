"""CARE-style isotropic restoration, trained from scratch (``ssai3d train-care``, ``--method care``).

The CARE isotropic recipe (Weigert et al. 2018): lateral patches of the stack
are blurred along one axis with the one known axial PSF and subsampled like z,
a U-Net learns to undo it, and the network then runs on every XZ and YZ slice.
It differs from SSAI-3D in exactly what the comparison is about: no
pretraining, one PSF instead of a bank, no layer selection, and no explicit
denoiser (the U-Net sees the raw lateral planes, noise included, as CARE does).

The blur applied to a lateral patch is the part of the axial PSF the lateral
image does not already have: sd ``sqrt(sd_z**2 - sd_x**2)`` along the axis.
Pairs come from :class:`ssai3d_dask.adaptation.pairs.PairSynthesizer` with a one-kernel
bank, so subsampling and interpolation are exactly the pipeline's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask import __version__
from ssai3d_dask.progress import ProgressLike
from ssai3d_dask.models.folder import AdaptedModel, check_new_folder, write_folder
from ssai3d_dask.models.manifest import InputRef, ModelManifest
from ssai3d_dask.models.unet import CareUNet
from ssai3d_dask.adaptation.losses import l1_loss
from ssai3d_dask.adaptation.training import fit, make_optimizer, split_validation
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.models.nafnet import count_parameters
from ssai3d_dask.adaptation.pairs import PairSynthesizer, batches
from ssai3d_dask.adaptation.psf import PSFBank
from ssai3d_dask.adaptation.sampling import sample_lateral_patches, volume_statistics
from ssai3d_dask.io.volume import Volume
from ssai3d_dask.models.precision import resolve_precision
from ssai3d_dask.settings import CareSettings, resolve_device

logger = logging.getLogger(__name__)

def train_care(vol: Volume, out_dir: str | Path | None, settings: CareSettings,
               progress: ProgressLike = None, overwrite: bool = False):
    """Train a CARE U-Net from scratch on ``vol``'s lateral planes; write MODEL_DIR when ``out_dir`` is given.

    Returns an :class:`ssai3d_dask.adaptation.adapt.AdaptedModel` (network, normalisation, no denoiser).
    """
    settings = settings.fitted(vol)
    settings.check_volume(vol)
    check_new_folder(out_dir, overwrite)
    sigma = settings.blur_sigma_px(vol)
    device = resolve_device(settings.device)
    z_factor = isotropic_geometry(vol.shape, vol.voxel_size_um).z_factor
    t_start = time.perf_counter()
    norm = volume_statistics(vol, settings.seed)
    patches = sample_lateral_patches(vol, settings.n_patches, settings.patch_px, norm, settings.seed).patches
    rng = np.random.default_rng(settings.seed + 1)
    val_patches, train_patches = split_validation(patches, rng)
    synth = PairSynthesizer(PSFBank((sigma,), (0.0,), sigma_lateral_px=0.3), z_factor, device)
    # One line-shaped kernel (sd 0.3 across, the smallest the kernel builder makes): the lateral image
    # already carries the lateral blur.
    val = synth(torch.from_numpy(val_patches[:, None]), np.random.default_rng(settings.seed + 2))

    torch.manual_seed(settings.seed)
    device = torch.device(device)
    model = CareUNet(settings.base, settings.depth).to(device)
    opt, sched = make_optimizer(model.parameters(), "adam", settings.lr, 0.0, settings.iterations)
    precision = resolve_precision(settings.precision, device)
    history: dict = {"parameters": count_parameters(model), "precision": precision, "loss": [],
                     "val_l1_before": _val_l1(model, val)}

    def step_loss(blurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        return l1_loss(model(blurred), sharp)  # CSBDeep's default loss (MAE)

    history["seconds"] = fit(model, lambda _: synth(batches(train_patches, settings.batch_size, rng), rng), step_loss,
                             opt, sched, settings.iterations, log=history["loss"], desc="train CARE",
                             postfix=lambda v: {"l1": f"{v:.4f}"}, progress=progress, precision=precision)
    history["val_l1_after"] = _val_l1(model, val)
    logger.info("CARE: %d parameters, %d steps in %.1f s, validation L1 %.4f -> %.4f", history["parameters"],
                settings.iterations, history["seconds"], history["val_l1_before"], history["val_l1_after"])
    model.cpu().eval()
    manifest = ModelManifest(kind="care", z_factor=z_factor, normalization=norm, input=InputRef.of(vol),
                             settings=settings.to_dict(), history=history, package_version=__version__,
                             reach_px=model.reach_px,
                             extra={"blur_sigma_px": sigma, "seconds_total": round(time.perf_counter() - t_start, 2)})
    adapted = AdaptedModel(model, manifest)
    if out_dir is not None:
        write_folder(out_dir, model, manifest)
    return adapted


@torch.no_grad()
def _val_l1(model: CareUNet, val: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    return float(l1_loss(model(val[0]), val[1]))
