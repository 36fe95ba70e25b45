"""Settings of every stage as validated, versioned models, and the settings file.

Each model is checked when it is built: a wrong value raises :class:`~ssai3d_dask.errors.SettingsError`
naming the field and the fix, before any file is created or any voxel is read. Checks that need the
volume (patch size against the lateral size, the z step) are ``check_volume(vol)``.

Pydantic (as CAREamics does) rather than dataclasses: one declaration gives types, defaults, the help
text of the CLI options (:mod:`ssai3d_dask.cli.options` derives them from the fields), the validation and
the YAML round trip.

A settings file (YAML or TOML) holds one section per command::

    ssai3d_config: 1          # the file format version
    adapt:   {n_patches: 256, finetune: {iterations: 300}}
    restore: {method: {name: rl, psf_sigma_um: [0.4, 0.1, 0.1]}, chunks: [64, 128, 128]}
    care:    {psf_sigma_um: [0.4, 0.05, 0.05]}

``--config FILE`` reads it (options on the command line win), ``--print-config`` writes the effective
settings in the same form.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ssai3d_dask.errors import SettingsError, VolumeError

logger = logging.getLogger(__name__)

#: Version of the settings file layout.
CONFIG_VERSION = 1
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
_PRECISION_HELP = ("Network arithmetic: auto = bf16 autocast where the device computes bf16 fast (CUDA with bf16, "
                   "CPUs with AMX-BF16 or AVX512-BF16), fp32 elsewhere.")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def flag_of(model: type[BaseModel], name: str) -> str:
    """The command-line option of a field: ``--field-name`` unless the field names another."""
    info = model.model_fields.get(name)
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("flag", "--" + name.replace("_", "-")))


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(x) for x in e["loc"] if not isinstance(x, int)]
        owner = model
        for x in loc[:-1]:
            sub = owner.model_fields.get(x)
            owner = sub.annotation if sub is not None and isinstance(sub.annotation, type) else owner
        where = (".".join(loc) + (f" ({flag_of(owner, loc[-1])})" if loc[-1] in owner.model_fields else "")) if loc else ""
        msg = {"extra_forbidden": "unknown setting (--print-config lists the known ones)",
               "missing": "required, give it"}.get(e["type"], e["msg"].removeprefix("Value error, "))
        if msg.startswith("invalid ") and ": " in msg:  # a nested settings model's own message
            parts.append(".".join(loc) + "." + msg.split(": ", 1)[1] if loc else msg.split(": ", 1)[1])
            continue
        parts.append(f"{where}: {msg}" if where else msg)
    return f"invalid {model.__name__}: " + "; ".join(parts)


class Settings(BaseModel):
    """Base: unknown fields are errors (a typo in a settings file must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, type(self))) from None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _check_patch(patch_px: int, multiple: int, vol) -> None:
    from ssai3d_dask.geometry import check_anisotropy

    check_anisotropy(vol.voxel_size_um, vol.source)
    if min(vol.shape[1:]) < max(16, multiple):
        raise VolumeError(f"{vol.source}: lateral size {tuple(vol.shape[1:])} is below the smallest training patch "
                          f"({max(16, multiple)} px); the stack must be at least that wide in y and x")
    if patch_px > min(vol.shape[1:]):
        raise SettingsError(f"patch size {patch_px} px exceeds the lateral size {tuple(vol.shape[1:])}; "
                            f"pass a smaller --patch (multiple of {multiple})")
    if vol.anisotropy < 0.95:
        raise VolumeError(f"z step ({vol.voxel_size_um[0]} um) is finer than x ({vol.voxel_size_um[2]} um); "
                          f"check --voxel-size (z, y, x order)")


class _PatchSettings(Settings):
    """Settings that train on lateral patches of ``patch_px`` px, a multiple of :meth:`patch_multiple`."""

    def patch_multiple(self) -> int:
        raise NotImplementedError

    def fitted(self, vol) -> "_PatchSettings":
        """These settings with the default patch size shrunk to the largest multiple of :meth:`patch_multiple`
        that fits the stack's lateral size, when the patch was not chosen (command line or settings file); else
        unchanged.

        A 64 x 64 stack then runs with the defaults; a patch the user chose stays theirs, and one that does not
        fit is refused by :meth:`check_volume`.
        """
        multiple = self.patch_multiple()
        fit = min(vol.shape[1:]) // multiple * multiple
        if "patch_px" in self.model_fields_set or self.patch_px <= fit or fit < 16:
            return self
        logger.info("patch %d px -> %d px: the default does not fit the lateral size %s", self.patch_px, fit,
                    tuple(vol.shape[1:]))
        return self.model_copy(update={"patch_px": fit})

    def check_volume(self, vol) -> None:
        _check_patch(self.patch_px, self.patch_multiple(), vol)


# --- adaptation -------------------------------------------------------------------------------------

class FinetuneSettings(Settings):
    """Fine-tuning. Defaults follow the paper: Adam, lr 1e-3, weight decay 1e-4; run to convergence of the
    validation PSNR (patience 250 steps, at most 3000). The rate stays at its peak until the curve stalls (or the
    step or time budget nears its end), then decays to 1/100 over --cooldown steps (a cosine), and the best weights
    of the whole curve are kept. With the patience off, the rate follows one cosine over --iterations."""

    iterations: int = Field(3000, ge=1, description="Fine-tuning steps at most (a cap: --patience usually stops "
                                                    "it first).")
    patience: int | None = Field(250, ge=0, description="When the validation PSNR has not improved by 0.01 dB for "
                                                        "this many steps, decay the rate (--cooldown) and stop; the "
                                                        "best weights are kept (0: off, all --iterations run on one "
                                                        "cosine).")
    cooldown: int = Field(250, ge=0, description="Steps of learning-rate decay (cosine to 1/100) after the validation "
                                                 "PSNR stalls for --patience steps, or before --iterations or "
                                                 "--max-minutes run out; training stops at its end (0: stop at the "
                                                 "stall).")
    max_minutes: float | None = Field(None, gt=0, description="Stop fine-tuning after this many minutes (the "
                                                              "cooldown is fitted inside them).")
    eval_every: int = Field(25, ge=1, description="Steps between validation evaluations (the curve in the "
                                                  "manifest and validation.png; the patience's clock).")
    batch_size: int = Field(8, ge=1, description="Pairs per step.")
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
    n_patches: int = Field(256, ge=4, description="Lateral patches to sample from the stack.", json_schema_extra={"flag": "--patches"})
    patch_px: int = Field(96, ge=16, multiple_of=16, description="Patch size in px (multiple of 16; unless "
                                                                   "given, shrunk to fit a narrower stack).", json_schema_extra={"flag": "--patch"})
    psf_bank: Literal["auto", "wide", "paper"] = Field(
        "auto", description="Training blur. 'auto': the stack's own axial blur, estimated from the data (`ssai3d info "
                            "--psf`), times --psf-lean, as one PSF along z (angle 0); --sigmas (a measured axial "
                            "blur, leaned the same way) or --angles replace the estimate or the orientation. 'wide': "
                            "the paper's 25-PSF bank (--sigmas x --angles), widened when 1.25x the "
                            "estimate passes its centre (for a PSF that tilts or changes across the field). 'paper': "
                            "--sigmas x --angles exactly. Both fall back to 'paper' when the stack is too small to "
                            "estimate.")
    sigmas_px: tuple[float, ...] | None = Field(None, min_length=1,
                                                description="PSF bank: axial Gaussian sd in px [default: the estimate "
                                                            "(auto, times --psf-lean); 3,4,5,6,7 (wide, paper)]. "
                                                            "With a measured PSF, give sqrt(sd_z^2 - sd_x^2) in "
                                                            "lateral px (auto leans it too; paper takes it as is).",
                                                json_schema_extra={"flag": "--sigmas"})
    psf_lean: float = Field(1.15, ge=1.0, le=2.0,
                            description="--psf-bank auto trains on this multiple of the axial blur (estimated, or "
                                        "given by --sigmas): a network adapted on one blur under-corrects a wider "
                                        "one far more than it over-corrects a narrower one (1.0: the blur as it is, "
                                        "for structure elongated along z).")
    angles_deg: tuple[float, ...] | None = Field(None, min_length=1,
                                                 description="PSF bank: orientations in degrees [default: 0 (auto); "
                                                             "-45,-22.5,0,22.5,45 (wide, paper)].",
                                                 json_schema_extra={"flag": "--angles"})
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
            raise ValueError(f"PSF bank widths (--sigmas) must be positive, got {list(self.sigmas_px)}")
        return self

    def patch_multiple(self) -> int:
        return 16


class CareSettings(_PatchSettings):
    """A CARE U-Net trained from scratch on one stack with one known PSF (``ssai3d train-care``)."""

    psf_sigma_um: tuple[float, float, float] = Field(description="The known optical PSF: Gaussian sd (z, y, x) in "
                                                                 "micrometres (required).")
    n_patches: int = Field(256, ge=4, description="Lateral patches to sample.", json_schema_extra={"flag": "--patches"})
    patch_px: int = Field(64, ge=16, description="Patch size in px (multiple of 2**depth; unless given, shrunk "
                                                  "to fit a narrower stack).", json_schema_extra={"flag": "--patch"})
    iterations: int = Field(1000, ge=1, description="Training steps.")
    batch_size: int = Field(16, ge=1, description="Pairs per step.")
    lr: float = Field(4e-4, gt=0, description="Adam learning rate (CSBDeep's default).")
    base: int = Field(16, ge=1, description="U-Net channels at the first level.", json_schema_extra={"flag": "--unet-base"})
    depth: int = Field(4, ge=1, le=6, description="U-Net levels.", json_schema_extra={"flag": "--unet-depth"})
    seed: int = Field(0, ge=0, description="Seeds sampling and training.")
    device: Device = Field("auto", description="Where to train.")
    precision: Precision = Field("auto", description=_PRECISION_HELP + " Weights and loss stay fp32.")

    @model_validator(mode="after")
    def _consistent(self):
        if min(self.psf_sigma_um) <= 0:
            raise ValueError(f"--psf-sigma-um needs three positive numbers (z y x), got {list(self.psf_sigma_um)}")
        if self.patch_px % (2 ** self.depth):
            raise ValueError(f"--patch {self.patch_px} must be a multiple of {2 ** self.depth} (U-Net depth)")
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
                                                  "(multiple of 2**depth).", json_schema_extra={"flag": "--volume"})
    n_volumes: int = Field(64, ge=4, description="Sub-volumes sampled from the stack (the training pool).",
                           json_schema_extra={"flag": "--volumes"})
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
            raise ValueError(f"--volume {self.volume_px} must be a multiple of {m} (the {self.preset} generator's "
                             f"depth)")
        if self.mip >= self.volume_px:
            raise ValueError(f"--mip {self.mip} must be smaller than --volume {self.volume_px}")
        return self

    def check_volume(self, vol) -> None:
        from ssai3d_dask.geometry import isotropic_geometry

        _check_patch(self.volume_px, 2 ** CYCLEGAN_PRESETS[self.preset]["g"][1], vol)
        zo = isotropic_geometry(vol.shape, vol.voxel_size_um).out_shape[0]
        if zo < self.volume_px:
            raise SettingsError(f"the stack is {zo} planes deep on the isotropic grid, less than --volume "
                                f"{self.volume_px}; pass a smaller --volume")


class PretrainSettings(Settings):
    """Offline pretraining of a base model (``ssai3d pretrain``)."""

    preset: Literal["small", "gopro-width32", "paper"] = Field("small", description="Architecture to train.")
    iterations: int = Field(6000, ge=1, description="Training steps.")
    batch_size: int = Field(8, ge=1, description="Images per step.")
    patch_px: int | None = Field(None, ge=16, multiple_of=16, description="Training patch size in px (default: "
                                                                          "the preset's).", json_schema_extra={"flag": "--patch"})
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine decay).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, ge=0, description="Seeds crops and degradations.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where to train.")
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


# --- restoration ------------------------------------------------------------------------------------

class NetworkMethod(Settings):
    """``ssai3d``: the adapted NAFNet (MODEL_DIR from ``ssai3d adapt``); ``care``: a CARE U-Net (from
    ``ssai3d train-care``); ``cyclegan``: an OT-CycleGAN generator (from ``ssai3d train-cyclegan``)."""

    name: Literal["ssai3d", "care", "cyclegan"] = "ssai3d"


class RLMethod(Settings):
    """Richardson-Lucy deconvolution with a known PSF (a Gaussian or a measured one)."""

    name: Literal["rl"] = "rl"
    psf_sigma_um: tuple[float, float, float] | None = Field(None, description="Gaussian PSF sd (z, y, x) in um "
                                                            "(the interpolation's z blur is added).")
    psf_file: str | None = Field(None, description="A measured 3D PSF (.tif/.npy, z y x) at the output voxel size.", json_schema_extra={"flag": "--psf"})
    iterations: int = Field(30, ge=1, description="Richardson-Lucy iterations.", json_schema_extra={"flag": "--rl-iterations"})

    @model_validator(mode="after")
    def _one_psf(self):
        if (self.psf_sigma_um is None) == (self.psf_file is None):
            raise ValueError("method rl needs the PSF: give --psf-sigma-um DZ DY DX or --psf FILE (one of them)")
        if self.psf_sigma_um is not None and min(self.psf_sigma_um) <= 0:
            raise ValueError(f"--psf-sigma-um needs three positive numbers (z y x), got {list(self.psf_sigma_um)}")
        return self


class InterpMethod(Settings):
    """Linear z interpolation only (the reference every method must beat)."""

    name: Literal["interp"] = "interp"


Method = Annotated[NetworkMethod | RLMethod | InterpMethod, Field(discriminator="name")]
METHODS = ("ssai3d", "care", "cyclegan", "rl", "interp")
#: Methods that restore with a network from a model folder.
NETWORK_METHODS = ("ssai3d", "care", "cyclegan")
_RL_FLAT = {"psf_sigma_um": "psf_sigma_um", "psf_file": "psf_file", "rl_iterations": "iterations"}


class RestoreSettings(Settings):
    """How to restore. Sizes in output voxels (z, y, x); each a multiple of 16."""

    method: Method = Field(default_factory=NetworkMethod, description="Restoration method and its parameters.")
    chunks: tuple[int, int, int] = Field((64, 128, 128), description="Output chunk shape in voxels (multiples of 16).")
    region: tuple[int, int, int] | None = Field(None, description="Output voxels per task (whole chunks, or whole "
                                                "--shards). Default: the region with the least halo overhead "
                                                "whose task fits --region-memory. Larger = less overhead, more "
                                                "memory per task, coarser resume and pruning.")
    region_memory: str = Field("auto", description="Memory one task may use when the region is chosen for you: a "
                               "size (e.g. 4GiB) or auto (half this machine's memory over its tasks, 1-16 GiB).")
    halo: int | None = Field(None, description="Halo in output voxels (default: from the model's reach).")
    view: Literal["mean", "xz", "yz"] = Field("mean", description="Average the XZ and YZ passes, or use one.")
    dtype: Literal["float32", "uint16", "uint8"] | None = Field(None, description="Output data type (default: the "
                                                                "input's).")
    batch: int | None = Field(None, ge=1, description="Slices per forward pass (default: 32 on CUDA; on CPU about "
                                                       "2**17 pixels, one 256 x 384 slice: the measured optima).")
    device: Device = Field("auto", description="Where networks run.")
    precision: Precision = Field("auto", description=_PRECISION_HELP + " Resolved on each worker.")
    compile: Literal["auto", "on", "off"] = Field("auto", description="Compile the network with TorchInductor: "
                                                  "2.4x faster on a GPU after about a minute of compilation per "
                                                  "worker; auto compiles on CUDA for outputs of 2**28 voxels or "
                                                  "more, never on CPU.")
    skip_empty: bool = Field(True, description="Prune regions whose input was never written (unwritten chunks of "
                                               "a sparse store): they read what computing them gives, the "
                                               "method's output on the input's fill value, so the result is the "
                                               "same as with --no-skip-empty.")
    skip_background: bool = Field(False, description="Interpolate, instead of restoring with the network, regions "
                                                     "whose denoised input stays at or under --empty-level: faster "
                                                     "on sparse tissue, but the background there is the "
                                                     "interpolation's, not the network's.")
    empty_level: float = Field(0.01, ge=0, description="Background level for --skip-background, as a fraction of "
                                                       "the normalised intensity range.")
    ngff_version: Literal["0.5", "0.4"] = Field("0.5", description="0.5: zarr v3, sharded; 0.4: zarr v2 "
                                                "(unsharded) for older viewers.")
    shards: tuple[int, int, int] | None = Field(None, description="Output shard shape (zarr v3): whole --chunks "
                                                "dividing --region (default: one shard per region).")
    sharding: bool = Field(True, description="Shard the output (zarr v3); off writes one file per chunk.", json_schema_extra={"flag": "--no-shards"})
    in_flight: int | None = Field(None, ge=1, description="Tasks in flight on a cluster (default: twice its "
                                                          "threads, or GPUs).")

    @model_validator(mode="before")
    @classmethod
    def _flat_method(cls, data: Any) -> Any:
        """Accept ``method="rl", psf_sigma_um=..., rl_iterations=...`` (the CLI's flat form) too."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        method = data.get("method", "ssai3d")
        flat = {v: x for k, v in _RL_FLAT.items() if (x := data.pop(k, None)) is not None}
        if isinstance(method, str):
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
            if flat and method != "rl":
                raise ValueError("--psf-sigma-um/--psf/--rl-iterations are for --method rl (CARE takes its PSF at "
                                 "`ssai3d train-care`)")
            data["method"] = {"name": method, **flat}
        elif flat:
            raise ValueError("give the rl parameters inside method, not beside it")
        return data

    @model_validator(mode="after")
    def _sizes(self):
        for name, vals in {"--chunks": self.chunks, "--region": self.region or (16,),
                           "--halo": (self.halo or 16,)}.items():
            if any(v <= 0 or v % 16 for v in vals):
                raise ValueError(f"{name} {tuple(vals)} must be positive multiples of 16 (the network's down-sampling)")
        if self.region is not None and any(r % c for r, c in zip(self.region, self.chunks)):
            raise ValueError(f"--region {self.region} must be a whole number of --chunks {self.chunks}")
        if self.region_memory != "auto":
            from dask.utils import parse_bytes

            try:
                ok = parse_bytes(self.region_memory) > 0
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise ValueError(f"--region-memory {self.region_memory!r} is not a size; give e.g. 4GiB or auto")
        if self.shards is not None:
            if self.ngff_version == "0.4" and self.sharding:
                raise ValueError("--shards needs NGFF 0.5 (zarr v3); NGFF 0.4 (zarr v2) has no shards")
            if not self.sharding:
                raise ValueError("--shards and --no-shards contradict each other; give one")
            region = self.region or self.shards
            if any(s <= 0 or s % c or r % s for s, c, r in zip(self.shards, self.chunks, region)):
                raise ValueError(f"--shards {self.shards} must be a whole number of --chunks {self.chunks} and "
                                 f"divide --region {self.region}, so that one task writes whole shards")
        return self

    @property
    def method_name(self) -> str:
        return self.method.name

    def shard_shape(self, region: tuple[int, int, int] | None = None) -> tuple[int, int, int] | None:
        """Level-0 shards of the output (None: unsharded): --shards, else one per region (``region`` when the
        region was chosen for the user)."""
        if not self.sharding or self.ngff_version == "0.4":
            return None
        return tuple(self.shards or region or self.region)  # type: ignore[return-value]

    def region_budget(self, tasks: int) -> int:
        """Bytes one task may use when the region is chosen for the user (``--region-memory``)."""
        from dask.utils import parse_bytes

        if self.region_memory != "auto":
            return int(parse_bytes(self.region_memory))
        import psutil

        share = psutil.virtual_memory().total // (2 * max(tasks, 1))
        return int(min(max(share, 2**30), 16 * 2**30))

    def resolved_device(self) -> str:
        return resolve_device(self.device)


# --- the settings file ------------------------------------------------------------------------------

#: Section name -> settings model.
SECTIONS: dict[str, type[Settings]] = {"adapt": AdaptSettings, "restore": RestoreSettings, "care": CareSettings,
                                       "cyclegan": CycleGANSettings, "pretrain": PretrainSettings}


def read_config(path: str | Path) -> dict[str, dict]:
    """The sections of a settings file (YAML, or TOML by its ``.toml`` suffix), version-checked."""
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"settings file {p} not found; write one with --print-config")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # the parsers' own error types; reported on one line
        raise SettingsError(f"cannot parse settings file {p}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {p} must hold a mapping of sections ({', '.join(SECTIONS)})")
    version = data.pop("ssai3d_config", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise SettingsError(f"settings file {p} has format version {version!r}; this ssai3d-dask reads up to "
                            f"{CONFIG_VERSION} (upgrade the package)")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise SettingsError(f"settings file {p}: unknown section(s) {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(SECTIONS)}")
    for name, section in data.items():
        if not isinstance(section, dict):
            raise SettingsError(f"settings file {p}: section {name} must be a mapping of settings")
    return data


def dump_config(sections: dict[str, Settings]) -> str:
    """YAML of the given settings, readable by :func:`read_config`."""
    import yaml

    data: dict[str, Any] = {"ssai3d_config": CONFIG_VERSION}
    data.update({name: s.to_dict() for name, s in sections.items()})
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
