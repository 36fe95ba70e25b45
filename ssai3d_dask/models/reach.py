"""Measured reach of a NAFNet with local pooling: the halo that makes tiled inference match whole images.

With a pooling window set (:meth:`NAFNet.set_pool_window`) a pixel's output depends only on a bounded
neighbourhood, but that bound (:func:`~ssai3d_dask.models.nafnet.receptive_radius_px`) is far larger than
what matters numerically: trained weights let far context fade, and how fast depends on the weights
(longer pretraining has made the shipped base reach further). The restoration halo is therefore measured,
not derived: :func:`measure_reach` finds the smallest halo (a multiple of the pooling grid) at which
tiles differ from whole-image inference by at most ``tolerance`` of the image range. ``ssai3d pretrain``
records it in the base manifest and ``ssai3d adapt`` in the model folder's, for the weights each wrote;
:func:`~ssai3d_dask.restoration.kernels.default_halo` uses it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ssai3d_dask.models.nafnet import NAFNet

#: Block-invariance promise: tiles within about 1e-3 of the image range of whole-slice inference. The reach
#: is measured at half of it, because the probe images are two and real slices can be harsher (the
#: benchmark image of benchmarks/base_model.py shows about twice the probe's error at the same halo).
REACH_TOLERANCE = 5e-4


def tiled_forward(model: NAFNet, img: torch.Tensor, tile_px: int, halo_px: int) -> torch.Tensor:
    """Apply ``model`` to a (B, C, H, W) image in tiles of ``tile_px`` extended by ``halo_px`` each side.

    Tiles start at multiples of ``tile_px`` (clipped at the image border); only the tile interior is
    kept. Both must be multiples of the model's pooling multiple, so that every tile sees the same
    down-sampling grid as the whole image.
    """
    m = model.config.multiple
    if tile_px % m or halo_px % m:
        raise ValueError(f"tile ({tile_px}) and halo ({halo_px}) must be multiples of {m}")
    h, w = img.shape[-2:]
    out = torch.empty_like(img)
    for y0 in range(0, h, tile_px):
        for x0 in range(0, w, tile_px):
            y1, x1 = min(y0 + tile_px, h), min(x0 + tile_px, w)
            ya, xa = max(y0 - halo_px, 0), max(x0 - halo_px, 0)
            yb, xb = min(y1 + halo_px, h), min(x1 + halo_px, w)
            res = model(img[..., ya:yb, xa:xb])
            out[..., y0:y1, x0:x1] = res[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return out


def probe_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (2, 3, H, W) batch of test images in 0..1, blurred along one axis (what the network restores):
    scikit-image's camera (reflect-padded to size) and random spots on a smooth background."""
    from skimage import data

    cam = data.camera().astype(np.float64) / 255.0
    cam = np.pad(cam, [(0, max(0, height - cam.shape[0])), (0, max(0, width - cam.shape[1]))], mode="symmetric")
    cam = ndimage.gaussian_filter1d(cam[:height, :width], 3.0, axis=0)
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((height, width)), 24) * 4
    spots = np.zeros((height, width))
    idx = rng.integers(0, [height, width], (height * width // 200, 2))
    spots[idx[:, 0], idx[:, 1]] = rng.uniform(0.5, 1.0, len(idx))
    img = img + ndimage.gaussian_filter(spots, 1.5) * 20 + ndimage.gaussian_filter(rng.random((height, width)), 3) * 3
    img = ndimage.gaussian_filter1d(img, 3.0, axis=0)
    img = (img - img.min()) / (img.max() - img.min())
    return torch.from_numpy(np.stack([cam, img]).astype(np.float32))[:, None].repeat(1, 3, 1, 1)


@torch.no_grad()
def tile_error(model: NAFNet, halo_px: int, img: torch.Tensor | None = None, tile_px: int = 128,
               whole: torch.Tensor | None = None) -> float:
    """max |whole - tiled| over ``img`` (default :func:`probe_image` 384 x 320) with ``halo_px`` halos."""
    img = probe_image(384, 320) if img is None else img
    was_training = model.training
    model.eval()
    try:
        whole = model(img) if whole is None else whole
        return float((whole - tiled_forward(model, img, tile_px, halo_px)).abs().max())
    finally:
        model.train(was_training)


@torch.no_grad()
def measure_reach(model: NAFNet, tolerance: float = REACH_TOLERANCE, max_px: int = 192, tile_px: int = 64) -> dict:
    """The smallest halo (px, a multiple of the pooling grid) whose tiles are within ``tolerance`` of
    whole-image inference, at the model's current pooling window, found by bisection (the tile error
    falls with the halo).

    Only interior tiles are compared: a 2 x 2 group of ``tile_px`` tiles at the centre of a probe image
    reaching ``max_px`` beyond them on every side (tiles at the image border see the same clipped
    context as the whole image). Returns ``{"reach_px", "tolerance", "tile_error", "pool_window_px"}``;
    ``reach_px`` is ``max_px`` with a ``tile_error`` above ``tolerance`` when even that is not enough
    (global pooling, say).
    """
    m = model.config.multiple
    was_training = model.training
    model.eval()
    tile = -(-tile_px // m) * m
    top = -(-max_px // m)  # in units of m
    margin = top * m
    img = probe_image(2 * tile + 2 * margin + m, 2 * tile + 2 * margin, seed=0)
    whole = model(img)
    errors: dict[int, float] = {}

    def err(k: int) -> float:
        if k not in errors:
            h = k * m
            worst = 0.0
            for y0 in (margin, margin + tile):
                for x0 in (margin, margin + tile):
                    out = model(img[..., y0 - h:y0 + tile + h, x0 - h:x0 + tile + h])[..., h:h + tile, h:h + tile]
                    worst = max(worst, float((out - whole[..., y0:y0 + tile, x0:x0 + tile]).abs().max()))
            errors[k] = worst
        return errors[k]

    lo, hi = 1, top
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            if err(mid) <= tolerance:
                hi = mid
            else:
                lo = mid + 1
        return {"reach_px": hi * m, "tolerance": tolerance, "tile_error": round(err(hi), 7),
                "pool_window_px": model.pool_window}
    finally:
        model.train(was_training)


def recorded_reach(model: torch.nn.Module) -> int | None:
    """The reach (px) recorded for these weights at the pooling window the model now uses, else None.

    A reach that did not meet its tolerance within the measured range is still the best bound known.
    """
    reach = getattr(model, "reach", None)
    if isinstance(reach, dict) and reach.get("pool_window_px") == getattr(model, "pool_window", None):
        return int(reach["reach_px"])
    return None
