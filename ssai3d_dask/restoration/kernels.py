"""Restoration: the pure block kernels (one region in, one restored region out; no I/O, no Dask).

Geometry (:mod:`ssai3d_dask.geometry`). The output grid puts z on the lateral pixel: ``Zo = round(Z * f)``
with ``f = dz / dx``; output plane ``i`` sits at input coordinate ``i / f``
(linear interpolation, clamped at the ends; :func:`ssai3d_dask.ops.resample.resample_linear`,
the function training used). The output is cut into regions of whole output
chunks (:mod:`ssai3d_dask.restoration.plan`); each region is processed with a halo in z, y and x.

Block invariance. Conceptually the whole output volume is reflect-padded by
the halo, and every region cuts its extended crop out of that padded volume.
A block kernel reproduces exactly that crop (reflection only where the
region touches the volume border), so a region sees the same pixels as
whole-volume inference. Region origins and halos are multiples of the
network's down-sampling factor (16), so every tile sees the same pooling
grid; with NAFNet's local channel-attention pooling and a halo at least the
network's effective reach, the trimmed interior equals whole-volume inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ssai3d_dask.io.casting import cast_output
from ssai3d_dask.ops.denoise import RADIUS_PX, Denoiser
from ssai3d_dask.models.nafnet import NAFNet, gray_forward
from ssai3d_dask.models.reach import recorded_reach
from ssai3d_dask.models.precision import as_input, autocast, compiled_forward
from ssai3d_dask.restoration.plan import EDGE_PAD_PX, Plan, Region
from ssai3d_dask.ops.normalize import Normalization
from ssai3d_dask.ops.padding import symmetric_pad
from ssai3d_dask.ops.resample import ZResampledCrop, resample_z_block
from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)

VIEWS = ("mean", "xz", "yz")
#: Pixels per forward pass on CPU when no batch is given. Measured (benchmarks/results/compute.md, small,
#: 2 threads): slices of 256 x 384 run at 9.4 slices/s one at a time, 6.4 four at a time, 3.4 sixteen at a
#: time (larger batches fall out of cache); tiny slices need a batch to amortise the per-call overhead.
CPU_BATCH_PIXELS = 2**17
#: Slice pixels one group of a pass holds at once in :func:`restore_block` (16 Mpixel: 64 MiB of float32; the
#: group is gathered, resampled, run and added into the core, a few such buffers at a time).
STREAM_PIXELS = 2**24


def extended_crop(plan: Plan, region: Region, crop_in: np.ndarray) -> tuple[ZResampledCrop, tuple[int, int, int]]:
    """The region's crop of the z-resampled volume, reflect-padded by ``plan.edge`` beyond its faces.

    Returns it as a :class:`~ssai3d_dask.ops.resample.ZResampledCrop` (computed a slab at a time from the
    input planes; ``np.asarray`` makes the whole float32 array), covering the core and its halo inside the
    volume and at most ``plan.edge`` beyond a face (:attr:`~ssai3d_dask.restoration.plan.Plan.ext_lengths`),
    and the offsets of the core inside it.
    """
    zo_in0, _ = plan.input_z_range(region)
    ext_lo = [max(c.start - h, 0) for c, h in zip(region.core, plan.halo)]
    ext_hi = [min(c.stop + h, o) for c, h, o in zip(region.core, plan.halo, plan.out_shape)]
    pad = [(min(ext_lo[i] - (region.core[i].start - plan.halo[i]), plan.edge[i]),
            min((region.core[i].stop + plan.halo[i]) - ext_hi[i], plan.edge[i])) for i in range(3)]
    ext = ZResampledCrop(crop_in, zo_in0, (ext_lo[0], ext_hi[0]), plan.z_factor, pad)
    return ext, tuple(c.start - lo + p[0] for c, lo, p in zip(region.core, ext_lo, pad))  # type: ignore[return-value]


def interpolate_core(ext: ZResampledCrop, core_offset: Sequence[int], core_shape: Sequence[int],
                     dtype: np.dtype) -> np.ndarray:
    """The z interpolation of a region's core, cast to ``dtype``, a band of rows at a time (a few MiB of
    float32 at once instead of the whole core; with the crop kept in its own dtype, 4.3 -> 1.8 s for a
    256 x 2048 x 512 uint16 region on 2 cores)."""
    oz, oy, ox = core_offset
    cz, cy, cx = core_shape
    out = np.empty(tuple(core_shape), dtype)
    rows = max(1, 2**22 // max(1, 4 * cz * cx))
    for y in range(0, cy, rows):
        band = ext[oz:oz + cz, oy + y:oy + min(y + rows, cy), ox:ox + cx]
        out[:, y:y + rows] = cast_output(np.ascontiguousarray(band), dtype)
    return out


def apply_network(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) -> (n, 1, H, W): a NAFNet through its 3-channel grayscale wrapper, other networks directly."""
    return gray_forward(model, x) if isinstance(model, NAFNet) else model(x)


@torch.no_grad()
def run_slices(model: NAFNet, slices: np.ndarray, batch: int | None, device: torch.device,
               precision: str = "fp32", compile: bool = False) -> np.ndarray:
    """Model on a stack of 2D slices (n, H, W), z along rows, in batches (:func:`apply_network`).

    ``precision`` is a resolved precision (:func:`ssai3d_dask.models.precision.resolve_precision`); the
    model is expected in channels-last layout on ``device`` (:func:`ssai3d_dask.models.precision.prepare`).
    ``compile`` runs it through TorchInductor (:func:`ssai3d_dask.models.precision.compiled_forward`).
    """
    out = np.empty_like(slices, dtype=np.float32)
    cuda = device.type == "cuda"
    if batch is None:  # CPU: about one 256 x 384 slice per pass (the measured optimum), more of small ones
        batch = max(1, CPU_BATCH_PIXELS // max(1, slices.shape[1] * slices.shape[2]))
    forward = compiled_forward(apply_network, model, compile)
    with autocast(precision, device):
        for i in range(0, len(slices), batch):
            x = torch.from_numpy(np.ascontiguousarray(slices[i:i + batch], np.float32))[:, None]
            x = x.pin_memory().to(device, non_blocking=True) if cuda else x
            y = forward(as_input(x))
            out[i:i + batch] = y[:, 0].float().cpu().numpy()
    return out


#: Edge of the output tiles a 3D network (the OT-CycleGAN generator) computes at once inside a region,
#: each with a margin of its receptive radius: about 0.5 GB of activations on CPU for the small preset.
VOLUME_TILE = {"cpu": 64, "cuda": 128}
#: Measured reach (px) of the shipped base model at its pooling window: tiles within ~1e-3 of whole slices.
#: The fallback for weights whose manifest records no reach (official checkpoints, older folders).
BASE_REACH_PX = 96


@torch.no_grad()
def run_volume(model: torch.nn.Module, ext: np.ndarray, core_offset: Sequence[int], core_shape: Sequence[int],
               device: torch.device, precision: str = "fp32", tile: int | None = None) -> np.ndarray:
    """A 3D network (input and output (1, 1, Z, Y, X)) on the core of an extended crop, tile by tile.

    Each output tile is computed from a window of the crop reaching the network's receptive radius
    (rounded up to its pooling multiple) beyond it, clipped to the crop. Window origins sit on the pooling
    grid of the crop, so every tile equals the network run on the whole crop: the result does not depend
    on the tile, as it does not on the region (the region's halo is that same radius).
    """
    m = int(getattr(model, "multiple", 1))
    margin = -(-int(model.reach_px) // m) * m
    tile = tile or VOLUME_TILE.get(device.type, 64)
    tile = max(m, tile // m * m)
    out = np.empty(tuple(core_shape), np.float32)
    starts = [range(0, c, tile) for c in core_shape]
    with autocast(precision, device):
        for tz in starts[0]:
            for ty in starts[1]:
                for tx in starts[2]:
                    t0 = [o + t for o, t in zip(core_offset, (tz, ty, tx))]
                    t1 = [min(a + tile, o + c) for a, o, c in zip(t0, core_offset, core_shape)]
                    lo = [max(a - margin, 0) for a in t0]
                    hi = [min(b + margin, n) for b, n in zip(t1, ext.shape)]
                    win = ext[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                    x = torch.from_numpy(np.ascontiguousarray(win, np.float32))[None, None].to(device)
                    y = model(as_input(x))[0, 0].float()
                    sel = tuple(slice(a - b, c - b) for a, b, c in zip(t0, lo, t1))
                    dst = tuple(slice(a - o, c - o) for a, o, c in zip(t0, core_offset, t1))
                    out[dst] = y[sel].cpu().numpy()
    return out


def denoise_planes(crop: np.ndarray, denoiser: Denoiser) -> np.ndarray:
    """Denoise the raw lateral (XY) planes of a normalised input crop, before z interpolation.

    The paper denoises the axial slices with the network that denoised the
    lateral training planes. Here the calibrated denoiser is applied to the
    raw lateral planes instead: that is the image domain it was calibrated on,
    interpolation then does not spread noise along z, and the raw stack has
    dz/dx times fewer planes than the XZ + YZ passes have slices.
    """
    return denoiser(crop) if denoiser.enabled else crop


def restore_block(ext: np.ndarray, core_offset: Sequence[int], core_shape: Sequence[int], model: torch.nn.Module | None,
                  view: str = "mean", batch: int | None = None, device: torch.device | str = "cpu",
                  precision: str = "fp32", compile: bool = False) -> np.ndarray:
    """Restore the core of one extended, normalised, z-resampled crop.

    XZ slices are taken at every core y, YZ slices at every core x; each slice
    keeps its halo in z and in its in-plane lateral axis. ``model=None``
    returns the interpolation. A 3D network (``model.dims == 3``, the OT-CycleGAN generator) runs on the
    crop as a volume instead (:func:`run_volume`; ``view`` does not apply).
    """
    if model is not None and getattr(model, "dims", 2) == 3:
        return run_volume(model, ext, core_offset, core_shape, torch.device(device), precision)
    if view not in VIEWS:
        raise SettingsError(f"view must be one of {VIEWS}, got {view!r}")
    device = torch.device(device)
    oz, oy, ox = core_offset
    cz, cy, cx = core_shape
    if model is not None and ext.size and float(ext.min()) == float(ext.max()):
        level = constant_level(model, float(ext.min()), max(core_offset), batch, device, precision, compile)
        return np.full(tuple(core_shape), level, np.float32)

    out = np.zeros(tuple(core_shape), np.float32)
    weight = np.float32(0.5 if view == "mean" else 1.0)
    group = max(1, STREAM_PIXELS // max(1, ext.shape[0] * max(ext.shape[1], ext.shape[2])))

    def run(slices: np.ndarray) -> np.ndarray:
        return run_slices(model, slices, batch, device, precision, compile) if model is not None else slices

    # Slices go through the network a group at a time and their cores are added into ``out``: memory is the
    # crop, the core and one group, not every full slice of a pass.
    if view in ("mean", "xz"):
        for i in range(0, cy, group):  # (y, z, x): z along rows
            xz = ext[:, oy + i:oy + min(i + group, cy), :].transpose(1, 0, 2)
            out[:, i:i + group, :] += weight * run(xz)[:, oz:oz + cz, ox:ox + cx].transpose(1, 0, 2)
    if view in ("mean", "yz"):
        for i in range(0, cx, group):  # (x, z, y)
            yz = ext[:, :, ox + i:ox + min(i + group, cx)].transpose(2, 0, 1)
            out[:, :, i:i + group] += weight * run(yz)[:, oz:oz + cz, oy:oy + cy].transpose(1, 2, 0)
    return out


def constant_level(model: torch.nn.Module, value: float, halo: int, batch: int | None = None,
                   device: torch.device | str = "cpu", precision: str = "fp32", compile: bool = False) -> float:
    """What a 2D network makes of a slice of one value: its mean output over one period of its
    down-sampling grid (16 px) at the centre of a constant slice with ``halo`` px on every side.

    A network with strided down-sampling answers a flat input with a pattern of that period (measured on
    the shipped base: 9-66 counts of a 29126-count range at normalised levels 0, -0.03 and 0.3), which is
    no structure of the sample. Restoring a constant crop to this one level keeps that pattern out of flat
    regions and makes every constant region, computed or pruned, read the same value.
    """
    period = int(getattr(model, "multiple", 0) or getattr(getattr(model, "config", None), "multiple", 0) or 16)
    size = 2 * int(halo) + period
    out = run_slices(model, np.full((1, size, size), value, np.float32), batch, torch.device(device), precision,
                     compile)
    return float(out[0, halo:halo + period, halo:halo + period].mean(dtype=np.float64))


def to_output(restored: np.ndarray, norm: Normalization, dtype: np.dtype, in_place: bool = False) -> np.ndarray:
    """Undo normalisation, clip to the dtype's range and cast (integers rounded).

    In float32 (values of 16-bit data are integers far below 2**24, so rounding to the output type is the
    same as in float64, at a quarter of the memory traffic), on a copy, or with ``in_place`` in
    ``restored`` itself when it is a float32 array the caller no longer needs (a region's result: one
    float32 copy of the core less per task).
    """
    if in_place and isinstance(restored, np.ndarray) and restored.dtype == np.float32 and restored.flags.writeable:
        y = restored
    else:
        y = np.array(restored, dtype=np.float32, copy=True)
    y *= np.float32(norm.high - norm.low)
    y += np.float32(norm.low)
    return cast_output(y, dtype)


def default_halo(model: NAFNet | None, denoiser: Denoiser, multiple: int = 16) -> int:
    """Halo (output voxels) for block invariance to about 1e-3 of the output range.

    The model's reach is measured, not its theoretical receptive field (which
    local pooling makes far larger than what matters): the reach recorded with the
    weights at the pooling window in use (:mod:`ssai3d_dask.models.reach`; ``ssai3d
    pretrain`` and ``ssai3d adapt`` measure it), else :data:`BASE_REACH_PX`, measured
    for the shipped base; plus the denoiser's radius, rounded up to ``multiple``.
    """
    if model is None:
        reach = 0
    elif hasattr(model, "reach_px"):  # CARE U-Net, OT-CycleGAN generator: the receptive-field radius
        reach = model.reach_px
    else:
        measured = recorded_reach(model)
        reach = max(BASE_REACH_PX if measured is None else measured, model.config.train_size // 2)
    reach += RADIUS_PX if denoiser.enabled else 0
    reach = max(reach, 1)
    return int(-(-reach // multiple) * multiple)


def restore_in_memory(raw: np.ndarray, z_factor: float, model: NAFNet | None, denoiser: Denoiser,
                      norm: Normalization, halo: int, view: str = "mean", dtype=np.float32,
                      precision: str = "fp32", device: torch.device | str = "cpu") -> np.ndarray:
    """Whole-volume reference, written without the block plan: denoise the raw planes, resample z for
    the whole stack, reflect-pad every axis by ``halo`` (at most :data:`~ssai3d_dask.restoration.plan.EDGE_PAD_PX`,
    as the block plan does), run the XZ and YZ passes on full slices, crop, average.

    Block invariance means :func:`ssai3d_dask.restoration.pipeline.restore` must agree with this.
    """
    zo = int(round(raw.shape[0] * z_factor))
    planes = denoise_planes(norm.apply(np.asarray(raw, np.float32)), denoiser)
    full = resample_z_block(planes, 0, slice(0, zo), z_factor)
    edge = min(halo, EDGE_PAD_PX)  # what the block plan reflects beyond the volume's faces
    padded = symmetric_pad(full, [(edge, edge)] * 3)
    out = restore_block(padded, (edge, edge, edge), full.shape, model, view, device=device, precision=precision)
    return to_output(out, norm, np.dtype(dtype))
