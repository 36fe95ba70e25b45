"""Tiled inference of one image, for tests and benchmarks of NAFNet's local pooling (not used by the package:
restoration tiles volumes through its block plan)."""

from __future__ import annotations

import torch

from ssai3d_dask.models.nafnet import NAFNet


def tiled_forward(model: NAFNet, img: torch.Tensor, tile_px: int, halo_px: int) -> torch.Tensor:
    """Apply ``model`` to a large (B, C, H, W) image in overlapping tiles.

    Tiles start at multiples of ``tile_px`` and are extended by ``halo_px`` on
    each side (clipped at the image border); only the tile interior is kept.
    With local pooling and ``halo_px >= receptive_radius_px(...)`` the result
    equals whole-image inference up to float rounding. ``tile_px`` and
    ``halo_px`` must be multiples of ``2**depth`` so that every tile sees the
    same down-sampling grid as the whole image.
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
            out[..., y0:y1, x0:x1] = res[..., y0 - ya : y1 - ya, x0 - xa : x1 - xa]
    return out
