"""Settings of the training stages: adaptation (and its fine-tuning), CARE, OT-CycleGAN, pretraining."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.settings.base import _PRECISION_HELP, Device, Precision, Settings, _check_patch, _PatchSettings

logger = logging.getLogger(__name__)

# --- adaptation -------------------------------------------------------------------------------------

class FinetuneSettings(Settings):
    """Fine-tuning. Adam, lr 1e-3, weight decay 1e-4 (the paper's), on 64-px crops of the synthesized pairs (whole
    pairs for a blur too wide for them); run to convergence of the validation PSNR (no 0.01 dB gain in 250 steps, at
    most 3000). The rate stays at its peak until the curve stalls (or the step or time budget nears its end), then
    decays to 1/100 over --cooldown steps (a cosine), and the best weights of the whole curve are kept. With the
    patience off, the rate follows one cosine over --iterations."""

    iterations: int = Field(3000, ge=1, description="Fine-tuning steps at most (a cap: --patience usually stops "
                                                    "it first).")
    patience: int | None = Field(250, ge=0, description="When the validation PSNR has not gained --min-gain-db for "
                                                        "this many steps, decay the rate (--cooldown) and stop; the "
                                                        "best weights are kept (0: off, all --iterations run on one "
                                                        "cosine).")
    min_gain_db: float = Field(0.01, ge=0, description="The validation PSNR gain (dB) that resets --patience's "
                                                       "clock.")
    cooldown: int = Field(250, ge=0, description="Steps of learning-rate decay (cosine to 1/100) after the validation "
                                                 "PSNR stalls for --patience steps, or before --iterations or "
                                                 "--max-minutes run out; training stops at its end (0: stop at the "
                                                 "stall).")
    max_minutes: float | None = Field(None, gt=0, description="Stop fine-tuning after this many minutes (the "
                                                              "cooldown is fitted inside them).")
    eval_every: int = Field(25, ge=1, description="Steps between validation evaluations (the curve in the "
                                                  "manifest and validation.png; the patience's clock).")
    batch_size: int = Field(8, ge=1, description="Pairs per step.")
    crop_px: int = Field(64, ge=0, multiple_of=16, description="Train on a random square of this many px cut from "
                                                               "each synthesized pair (the validation keeps whole "
                                                               "patches); whole pairs when it is 0, --patch-px or "
                                                               "more, or too small for the blur (under 6 sd of the "
                                                               "widest training PSF or 8 z steps).")
    ema: float = Field(0.0, ge=0, lt=1, description="Evaluate and keep an exponential moving average of the "
                                                      "weights with this decay per step (a smooth validation curve, "
                                                      "no optimiser noise in the result; with --patience 100 "
                                                      "--min-gain-db 0.02 --cooldown 100 it stops 1.4-1.6x sooner "
                                                      "than the defaults at the same restoration on narrow blurs, too "
                                                      "soon on wide ones); 0: the weights themselves.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (paper: 1e-3; cosine decay to 1/100).")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay.")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="Optimiser.")
    device: Device = Field("auto", description="Where to train: auto picks CUDA when a GPU is visible.")
    precision: Precision = Field("auto", description=_PRECISION_HELP + " Weights and loss stay fp32.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between resume checkpoints "
                                                         "(MODEL_DIR/finetune.resume.pt): a killed run, rerun with "
                                                         "the same command, continues from the last one to the same "
                                                         "weights.")


class AdaptSettings(_PatchSettings):
    """Everything that decides an adaptation (``ssai3d adapt``, the first half of ``ssai3d run``)."""

    base: str = Field("base", description="Base model: 'base' (shipped), a preset, or a checkpoint path (ours "
                                          "or an official NAFNet .pth).")
    n_patches: int = Field(256, ge=4, description="Lateral patches to sample from the stack.", json_schema_extra={"former_flag": "--patches"})
    patch_px: int = Field(96, ge=16, multiple_of=16, description="Patch size in px (multiple of 16; unless "
                                                                   "given, shrunk to fit a narrower stack).", json_schema_extra={"former_flag": "--patch"})
    psf_bank: Literal["auto", "wide", "paper"] = Field(
        "auto", description="Training blur. 'auto': the stack's own axial blur, estimated from the data (`ssai3d info "
                            "--psf`), times --psf-lean, as one PSF along z (angle 0); --sigmas-px (a measured axial "
                            "blur, leaned the same way) or --angles-deg replace the estimate or the orientation. 'wide': "
                            "the paper's 25-PSF bank (--sigmas-px x --angles-deg), widened when 1.25x the "
                            "estimate passes its centre (for a PSF that tilts or changes across the field). 'paper': "
                            "--sigmas-px x --angles-deg exactly. Both fall back to 'paper' when the stack is too small to "
                            "estimate.")
    sigmas_px: tuple[float, ...] | None = Field(None, min_length=1,
                                                description="PSF bank: axial Gaussian sd in px [default: the estimate "
                                                            "(auto, times --psf-lean); 3,4,5,6,7 (wide, paper)]. "
                                                            "With a measured PSF, give sqrt(sd_z^2 - sd_x^2) in "
                                                            "lateral px (auto leans it too; paper takes it as is).",
                                                json_schema_extra={"former_flag": "--sigmas"})
    psf_lean: float = Field(1.15, ge=1.0, le=2.0,
                            description="--psf-bank auto trains on this multiple of the axial blur (estimated, or "
                                        "given by --sigmas-px): a network adapted on one blur under-corrects a wider "
                                        "one far more than it over-corrects a narrower one (1.0: the blur as it is, "
                                        "for structure elongated along z).")
    angles_deg: tuple[float, ...] | None = Field(None, min_length=1,
                                                 description="PSF bank: orientations in degrees [default: 0 (auto); "
                                                             "-45,-22.5,0,22.5,45 (wide, paper)].",
                                                 json_schema_extra={"former_flag": "--angles"})
    denoise: Literal["auto", "on", "off"] = Field("auto", description="Denoise lateral planes (and axial slices at "
                                                                      "inference); auto decides from the noise level.")
    input_noise: Literal["auto", "off"] = Field(
        "auto", description="Add the stack's own noise (a Poisson-Gaussian model fitted on the lateral planes, after "
                            "denoising) to the blurred training inputs, as the raw stack carries it after the blur; "
                            "auto: when the fitted noise is above the threshold of noise-free stacks; off: never.")
    layers_fraction: float = Field(0.1, gt=0, le=1, description="Fraction of layers to fine-tune with --selection "
                                                                "snip/surgeon/random.")
    selection: Literal["all", "surgeon", "snip", "random"] = Field(
        "all", description="Which layers are fine-tuned: all (default: for the shipped 1.7M-parameter base, training "
                           "every layer restores better than any 10%), "
                           "or --layers-fraction of them chosen by normalised snip, by the shipped surgeon (the "
                           "paper's sparse fine-tuning, for large bases) or at random (an ablation).")
    metrics_fraction: float = Field(0.01, gt=0, le=1, description="Fraction of the pairs for zero-shot metrics.")
    seed: int = Field(0, ge=0, description="Seeds sampling, pairs and fine-tuning.")
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)

    @model_validator(mode="after")
    def _positive_widths(self):
        if self.sigmas_px is not None and min(self.sigmas_px) <= 0:
            raise ValueError(f"PSF bank widths (--sigmas-px) must be positive, got {list(self.sigmas_px)}")
        return self

    def patch_multiple(self) -> int:
        return 16


class CareSettings(_PatchSettings):
    """A CARE U-Net trained from scratch on one stack with one known PSF (``ssai3d train-care``)."""

    psf_sigma_um: tuple[float, float, float] = Field(description="The known optical PSF: Gaussian sd (z, y, x) in "
                                                                 "micrometres (required).")
    n_patches: int = Field(256, ge=4, description="Lateral patches to sample.", json_schema_extra={"former_flag": "--patches"})
    patch_px: int = Field(64, ge=16, description="Patch size in px (multiple of 2**depth; unless given, shrunk "
                                                  "to fit a narrower stack).", json_schema_extra={"former_flag": "--patch"})
    iterations: int = Field(1000, ge=1, description="Training steps.")
    batch_size: int = Field(16, ge=1, description="Pairs per step.")
    lr: float = Field(4e-4, gt=0, description="Adam learning rate (CSBDeep's default).")
    base: int = Field(16, ge=1, description="U-Net channels at the first level.", json_schema_extra={"former_flag": "--unet-base"})
    depth: int = Field(4, ge=1, le=6, description="U-Net levels.", json_schema_extra={"former_flag": "--unet-depth"})
    seed: int = Field(0, ge=0, description="Seeds sampling and training.")
    device: Device = Field("auto", description="Where to train.")
    precision: Precision = Field("auto", description=_PRECISION_HELP + " Weights and loss stay fp32.")

    @model_validator(mode="after")
    def _consistent(self):
        if min(self.psf_sigma_um) <= 0:
            raise ValueError(f"--psf-sigma-um needs three positive numbers (z y x), got {list(self.psf_sigma_um)}")
        if self.patch_px % (2 ** self.depth):
            raise ValueError(f"--patch-px {self.patch_px} must be a multiple of {2 ** self.depth} (U-Net depth)")
        return self

    def patch_multiple(self) -> int:
        return 2 ** self.depth  # the U-Net's pooling

    def blur_sigma_px(self, vol) -> float:
        """Axial blur to add to a lateral patch, in lateral pixels."""
        import math

        dx = vol.voxel_size_um[2]
        sz, sx = self.psf_sigma_um[0] / dx, self.psf_sigma_um[2] / dx
        if sz <= sx:
            raise SettingsError(f"axial PSF sd {self.psf_sigma_um[0]} um is not larger than the lateral "
                                f"{self.psf_sigma_um[2]} um: nothing to restore along z")
        return math.sqrt(sz ** 2 - sx ** 2)


#: OT-CycleGAN network sizes: generator U-Net (base, depth) and discriminator (base, layers).
CYCLEGAN_PRESETS = {"small": {"g": (16, 2), "f": (8, 2), "d": (32, 3)},   # 0.35M + 0.09M + 2 x 0.17M: CPU
                    "paper": {"g": (32, 3), "f": (16, 3), "d": (64, 3)}}  # 5.8M + 1.5M + 2 x 0.66M: a GPU


class CycleGANSettings(Settings):
    """OT-CycleGAN (Park et al. 2022) trained on one stack, no PSF, no truth (``ssai3d train-cyclegan``)."""

    preset: Literal["small", "paper"] = Field("small", description="Network sizes: small (0.8M parameters in all, "
                                                                   "for a CPU) or paper (8.6M, for a GPU).")
    volume_px: int = Field(32, ge=16, description="Edge of the training sub-volumes in isotropic voxels "
                                                  "(multiple of 2**depth).", json_schema_extra={"former_flag": "--volume"})
    n_volumes: int = Field(64, ge=4, description="Sub-volumes sampled from the stack (the training pool).",
                           json_schema_extra={"former_flag": "--volumes"})
    iterations: int = Field(1500, ge=1, description="Training steps (each: generators, then discriminators).")
    batch_size: int = Field(2, ge=1, description="Sub-volumes per step.")
    slices: int = Field(8, ge=1, description="Slices per sub-volume shown to each discriminator per step.")
    mip: int = Field(1, ge=1, description="Discriminators see maximum projections over this many adjacent slices "
                                          "(1 = plain slices; the paper evaluates on 15-slice MIPs).")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate (beta1 0.5, cosine decay), as CycleGAN.")
    cycle_weight: float = Field(10.0, ge=0, description="Weight of the cycle (transport-cost) L1 term against "
                                                         "the least-squares adversarial terms.")
    seed: int = Field(0, ge=0, description="Seeds sampling and training.")
    device: Device = Field("auto", description="Where to train.")
    precision: Precision = Field("auto", description=_PRECISION_HELP + " Weights and loss stay fp32.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between resume checkpoints (MODEL_DIR/resume.pt).")

    @model_validator(mode="after")
    def _consistent(self):
        m = 2 ** CYCLEGAN_PRESETS[self.preset]["g"][1]
        if self.volume_px % m:
            raise ValueError(f"--volume-px {self.volume_px} must be a multiple of {m} (the {self.preset} generator's "
                             f"depth)")
        if self.mip >= self.volume_px:
            raise ValueError(f"--mip {self.mip} must be smaller than --volume-px {self.volume_px}")
        return self

    def check_volume(self, vol) -> None:
        from ssai3d_dask.geometry import isotropic_geometry

        _check_patch(self.volume_px, 2 ** CYCLEGAN_PRESETS[self.preset]["g"][1], vol)
        zo = isotropic_geometry(vol.shape, vol.voxel_size_um).out_shape[0]
        if zo < self.volume_px:
            raise SettingsError(f"the stack is {zo} planes deep on the isotropic grid, less than --volume-px "
                                f"{self.volume_px}; pass a smaller --volume-px")


class PretrainSettings(Settings):
    """Offline pretraining of a base model (``ssai3d pretrain``)."""

    preset: Literal["small", "gopro-width32", "paper"] = Field("small", description="Architecture to train.")
    iterations: int = Field(6000, ge=1, description="Training steps.")
    batch_size: int = Field(8, ge=1, description="Images per step.")
    patch_px: int | None = Field(None, ge=16, multiple_of=16, description="Training patch size in px (default: "
                                                                          "the preset's).", json_schema_extra={"former_flag": "--patch"})
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine decay).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, ge=0, description="Seeds crops and degradations.")
    device: Device = Field("auto", description="Where to train: auto picks CUDA when a GPU is visible.")
    precision: Precision = Field("auto", description=_PRECISION_HELP + " Weights and loss stay fp32.")
    init: str | None = Field(None, description="Warm start from this checkpoint ('base' = the shipped model) with a "
                                               "fresh optimiser and schedule; use another --seed so it sees new crops.")
    max_axial_sd: float = Field(16.0, ge=7.5, le=32.0,
                                description="Widest axial Gaussian blur (sd, px) in the training degradations: 30% "
                                            "of the axial-model samples are drawn above 7.5 px up to this. Stacks "
                                            "with a z step 5x the pixel have axial blur near sd 12 px on the "
                                            "isotropic grid; 7.5 reproduces the narrower range of earlier bases.")
    checkpoint_every: int = Field(250, ge=1, description="Steps between resume checkpoints.")
    eval_every: int = Field(1000, ge=1, description="Steps between held-out evaluations.")
    note: str | None = Field(None, description="Free text kept in the manifest and the JSON sidecar (how the run was "
                                               "made: machine, lineage, wall time).")


