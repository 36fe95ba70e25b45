"""Settings of the restoration: the method (a network, Richardson-Lucy or interpolation) and how the
volume is cut, computed and written."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from ssai3d_dask.settings.base import _PRECISION_HELP, Device, Precision, Settings, check_size, resolve_device

logger = logging.getLogger(__name__)

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
    psf_file: str | None = Field(None, description="A measured 3D PSF (.tif/.npy, z y x) at the output voxel size.", json_schema_extra={"former_flag": "--psf"})
    iterations: int = Field(30, ge=1, description="Richardson-Lucy iterations.", json_schema_extra={"flag": "--rl-iterations"})

    @model_validator(mode="after")
    def _one_psf(self):
        if (self.psf_sigma_um is None) == (self.psf_file is None):
            raise ValueError("method rl needs the PSF: give --psf-sigma-um DZ DY DX or --psf-file FILE (one of them)")
        if self.psf_sigma_um is not None and min(self.psf_sigma_um) <= 0:
            raise ValueError(f"--psf-sigma-um needs three positive numbers (z y x), got {list(self.psf_sigma_um)}")
        return self


class InterpMethod(Settings):
    """Linear z interpolation only (the reference every method must beat)."""

    name: Literal["interp"] = "interp"


Method = Annotated[NetworkMethod | RLMethod | InterpMethod, Field(discriminator="name")]
#: Every method's settings model by its name (the method itself: :mod:`ssai3d_dask.restoration.methods`).
METHOD_SETTINGS: dict[str, type[Settings]] = {n: m for m in (NetworkMethod, RLMethod, InterpMethod)
                                               for n in get_args(m.model_fields["name"].annotation)}
METHODS = tuple(METHOD_SETTINGS)
#: The method ``restore`` uses when none is given, and the one ``run`` adapts a model for.
DEFAULT_METHOD: str = NetworkMethod.model_fields["name"].default
#: Parameters the CLI gives beside --method (flat) and the method settings' fields they set.
_FLAT = {"psf_sigma_um": "psf_sigma_um", "psf_file": "psf_file", "rl_iterations": "iterations"}


def check_method_parameters(method: str, params) -> None:
    """Refuse parameters the method's settings model has no field for, naming the methods that take them."""
    foreign = [p for p in params if p not in METHOD_SETTINGS[method].model_fields]
    if foreign:
        flags = "/".join(sorted({f"--{k.replace('_', '-')}" for k, v in _FLAT.items() if v in foreign}
                                | {f"--{p.replace('_', '-')}" for p in foreign if p not in _FLAT.values()}))
        owners = sorted(n for n, m in METHOD_SETTINGS.items() if set(foreign) <= set(m.model_fields))
        raise ValueError(f"{flags} are for --method {' or '.join(owners) or '(none)'}, not {method} (CARE takes its "
                         f"PSF at `ssai3d train-care`)")


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
    sharding: bool = Field(True, description="Shard the output (zarr v3); off writes one file per chunk.", json_schema_extra={"former_flag": "--no-shards"})
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
        flat = {v: x for k, v in _FLAT.items() if (x := data.pop(k, None)) is not None}
        if isinstance(method, str):
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
            check_method_parameters(method, flat)
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
        check_size(self.region_memory, "--region-memory")
        if self.shards is not None:
            if self.ngff_version == "0.4" and self.sharding:
                raise ValueError("--shards needs NGFF 0.5 (zarr v3); NGFF 0.4 (zarr v2) has no shards")
            if not self.sharding:
                raise ValueError("--shards and --no-sharding contradict each other; give one")
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


