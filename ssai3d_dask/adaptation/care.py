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
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ssai3d_dask import __version__
from ssai3d_dask.errors import SettingsError, VolumeError
from ssai3d_dask.models.folder import AdaptedModel, check_new_folder, write_folder
from ssai3d_dask.models.unet import CareUNet
from ssai3d_dask.adaptation.losses import l1_loss
from ssai3d_dask.adaptation.training import fit, make_optimizer, split_validation
from ssai3d_dask.geometry import isotropic_geometry
from ssai3d_dask.models.nafnet import count_parameters
from ssai3d_dask.adaptation.pairs import PairSynthesizer, batches
from ssai3d_dask.adaptation.psf import PSFBank
from ssai3d_dask.adaptation.sampling import sample_lateral_patches, volume_statistics
from ssai3d_dask.io.volume import Volume

logger = logging.getLogger(__name__)

@dataclass
class CareSettings:
    """A CARE model for one stack. ``psf_sigma_um``: the optical PSF sd (z, y, x) in micrometres."""

    psf_sigma_um: tuple[float, float, float] = (0.4, 0.05, 0.05)
    n_patches: int = 256
    patch_px: int = 64
    iterations: int = 1000
    batch_size: int = 16
    lr: float = 4e-4  # CSBDeep's default
    base: int = 16
    depth: int = 4
    seed: int = 0
    device: str = "cpu"

    def validate(self, vol: Volume) -> None:
        if len(self.psf_sigma_um) != 3 or min(self.psf_sigma_um) <= 0:
            raise SettingsError(f"--psf-sigma-um needs three positive numbers (z y x), got {self.psf_sigma_um}")
        if self.patch_px % (2**self.depth):
            raise SettingsError(f"--patch {self.patch_px} must be a multiple of {2**self.depth} (U-Net depth)")
        if self.patch_px > min(vol.shape[1:]):
            raise SettingsError(f"--patch {self.patch_px} exceeds the lateral size {vol.shape[1:]}")
        if vol.anisotropy < 0.95:
            raise VolumeError(f"z step ({vol.voxel_size_um[0]} um) is finer than x ({vol.voxel_size_um[2]} um); "
                              f"check --voxel-size (z, y, x order)")

    def blur_sigma_px(self, vol: Volume) -> float:
        """Axial blur to add to a lateral patch, in lateral pixels."""
        dx = vol.voxel_size_um[2]
        sz, sx = self.psf_sigma_um[0] / dx, self.psf_sigma_um[2] / dx
        if sz <= sx:
            raise SettingsError(f"axial PSF sd {self.psf_sigma_um[0]} um is not larger than the lateral "
                                f"{self.psf_sigma_um[2]} um: nothing to restore along z")
        return math.sqrt(sz**2 - sx**2)


def train_care(vol: Volume, out_dir: str | Path | None, settings: CareSettings | None = None,
               progress: bool = True, overwrite: bool = False):
    """Train a CARE U-Net from scratch on ``vol``'s lateral planes; write MODEL_DIR when ``out_dir`` is given.

    Returns an :class:`ssai3d_dask.adaptation.adapt.AdaptedModel` (network, normalisation, no denoiser).
    """
    from ssai3d_dask.ops.denoise import Denoiser

    settings = settings or CareSettings()
    settings.validate(vol)
    check_new_folder(out_dir, overwrite)
    sigma = settings.blur_sigma_px(vol)
    z_factor = isotropic_geometry(vol.shape, vol.voxel_size_um).z_factor
    t_start = time.perf_counter()
    norm = volume_statistics(vol, settings.seed)
    patches = sample_lateral_patches(vol, settings.n_patches, settings.patch_px, norm, settings.seed).patches
    rng = np.random.default_rng(settings.seed + 1)
    val_patches, train_patches = split_validation(patches, rng)
    synth = PairSynthesizer(PSFBank((sigma,), (0.0,), sigma_lateral_px=0.3), z_factor, settings.device)
    # One line-shaped kernel (sd 0.3 across, the smallest the kernel builder makes): the lateral image
    # already carries the lateral blur.
    val = synth(torch.from_numpy(val_patches[:, None]), np.random.default_rng(settings.seed + 2))

    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    model = CareUNet(settings.base, settings.depth).to(device)
    opt, sched = make_optimizer(model.parameters(), "adam", settings.lr, 0.0, settings.iterations)
    history: dict = {"parameters": count_parameters(model), "loss": [], "val_l1_before": _val_l1(model, val)}

    def step_loss(blurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        return l1_loss(model(blurred), sharp)  # CSBDeep's default loss (MAE)

    history["seconds"] = fit(model, lambda _: synth(batches(train_patches, settings.batch_size, rng), rng), step_loss,
                             opt, sched, settings.iterations, log=history["loss"], desc="train CARE",
                             postfix=lambda v: {"l1": f"{v:.4f}"}, progress=progress)
    history["val_l1_after"] = _val_l1(model, val)
    logger.info("CARE: %d parameters, %d steps in %.1f s, validation L1 %.4f -> %.4f", history["parameters"],
                settings.iterations, history["seconds"], history["val_l1_before"], history["val_l1_after"])
    model.cpu().eval()
    manifest = {"kind": "care", "package_version": __version__,
                "input": {"source": vol.source, "shape": list(vol.shape), "voxel_size_um": list(vol.voxel_size_um),
                          "selection": vol.selection},
                "z_factor": z_factor, "normalization": norm.to_dict(), "blur_sigma_px": sigma,
                "settings": asdict(settings), "history": history,
                "seconds_total": round(time.perf_counter() - t_start, 2)}
    adapted = AdaptedModel(model, norm, Denoiser(), z_factor, manifest)
    if out_dir is not None:
        write_folder(out_dir, model, manifest)
    return adapted


@torch.no_grad()
def _val_l1(model: CareUNet, val: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    return float(l1_loss(model(val[0]), val[1]))
