"""Offline training images and degradations for pretraining the base model.

No downloads: images come from the samples inside scikit-image's wheel and from
procedural generators with natural-image statistics (dead leaves: occlusion,
power-law sizes, textured regions) and with fluorescence-like statistics
(blobs and filaments on a dark background). A fixed split holds images out.

Degradations cover what microscopes do: isotropic and elongated Gaussian blur
at any orientation (sd 0.5-8 px), line blur, defocus discs, subsample-and-
interpolate along one axis, Poisson-Gaussian noise.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from scipy import ndimage

from ssai3d_dask.adaptation.psf import axial_forward, conv2d_per_sample
from ssai3d_dask.ops.kernels import disc_kernel2d, gaussian_kernel2d, line_kernel2d, pad_kernel

logger = logging.getLogger(__name__)

#: skimage sample images used for training / held out (all ship inside the wheel).
TRAIN_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "moon", "page",
                 "text", "clock", "hubble_deep_field", "immunohistochemistry", "retina")
HELDOUT_SAMPLES = ("camera", "coins", "cell")


def _to_gray_float(im: np.ndarray) -> np.ndarray:
    im = np.asarray(im)
    if im.ndim == 3:
        im = im[..., :3].astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32)
    im = im.astype(np.float32)
    lo, hi = np.percentile(im, (0.5, 99.5))
    return np.clip((im - lo) / max(hi - lo, 1e-6), 0, 1)


def skimage_samples(names: tuple[str, ...]) -> list[np.ndarray]:
    """Grayscale float32 images in [0, 1] from ``skimage.data``."""
    import skimage.data

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            out.append(_to_gray_float(getattr(skimage.data, name)()))
    return out


def dead_leaves(size: int, rng: np.random.Generator, n_shapes: int = 2000) -> np.ndarray:
    """Dead-leaves image: occluding discs/ellipses, radii ~ r^-3, smooth shading and texture."""
    img = np.full((size, size), rng.uniform(0, 1), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rmin, rmax = 2.0, size / 4
    u = rng.uniform(size=n_shapes)
    radii = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5  # pdf ~ r^-3
    for r in radii[::-1] if rng.uniform() < 0.5 else radii:
        cy, cx = rng.uniform(-r, size + r, 2)
        a = rng.uniform(0.4, 1.0)
        t = rng.uniform(0, math.pi)
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, size))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, size))
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u1 = dy * math.cos(t) + dx * math.sin(t)
        v1 = -dy * math.sin(t) + dx * math.cos(t)
        mask = (u1 / r) ** 2 + (v1 / (a * r)) ** 2 <= 1
        val = rng.uniform(0, 1) + rng.uniform(-0.2, 0.2) * (dx / r)
        img[y0:y1, x0:x1][mask] = val[mask] if np.ndim(val) else val
    tex = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 1.0)
    img = img + 0.05 * tex
    return np.clip((img - img.min()) / max(float(np.ptp(img)), 1e-6), 0, 1)


def fluorescence_like(size: int, rng: np.random.Generator) -> np.ndarray:
    """Blobs (nuclei-like) and smooth filaments (axon-like) on a dark background."""
    img = np.zeros((size, size), np.float32)
    n_blobs = rng.integers(0, 40)
    pts = rng.uniform(0, size, (n_blobs, 2)).astype(int)
    img[pts[:, 0], pts[:, 1]] = rng.uniform(0.3, 1.0, n_blobs)
    img = ndimage.gaussian_filter(img, rng.uniform(1.0, 5.0)) * 40
    fil = np.zeros_like(img)
    for _ in range(rng.integers(3, 30)):
        p = rng.uniform(0, size, 2)
        d = rng.standard_normal(2)
        d /= np.linalg.norm(d)
        curv = rng.normal(0, 0.05)
        v = rng.uniform(0.2, 1.0)
        for _ in range(int(size * 1.5)):
            iy, ix = int(p[0]), int(p[1])
            if 0 <= iy < size and 0 <= ix < size:
                fil[iy, ix] = max(fil[iy, ix], v)
            c, s = math.cos(curv), math.sin(curv)
            d = np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])
            p = p + d
    fil = ndimage.gaussian_filter(fil, rng.uniform(0.5, 1.2)) * 3
    img = img + fil + 0.02 * rng.uniform()
    return np.clip(img / max(float(np.percentile(img, 99.9)), 1e-6), 0, 1).astype(np.float32)


def image_pool(split: str, seed: int, n_procedural: int = 48, size: int = 256) -> list[np.ndarray]:
    """Training (``split='train'``) or held-out (``'heldout'``) images in [0, 1]."""
    rng = np.random.default_rng(seed + (0 if split == "train" else 10_000))
    images = skimage_samples(TRAIN_SAMPLES if split == "train" else HELDOUT_SAMPLES)
    for i in range(n_procedural):
        images.append(dead_leaves(size, rng) if i % 2 == 0 else fluorescence_like(size, rng))
    return images


def random_crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random crops (flips/transposes too), (n, 1, size, size) float32."""
    out = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        im = images[rng.integers(len(images))]
        if min(im.shape) < size:
            im = np.pad(im, [(0, max(0, size - s)) for s in im.shape], mode="reflect")
        y = rng.integers(0, im.shape[0] - size + 1)
        x = rng.integers(0, im.shape[1] - size + 1)
        c = im[y : y + size, x : x + size]
        if rng.uniform() < 0.5:
            c = c.T
        if rng.uniform() < 0.5:
            c = c[::-1]
        out[i, 0] = c
    return torch.from_numpy(out)


#: Axial blur sd (px) up to which the axial-model samples are drawn uniformly; wider ones, up to
#: ``max_axial_sd``, make up :data:`WIDE_AXIAL_FRACTION` of them.
NARROW_AXIAL_SD = 7.5
WIDE_AXIAL_FRACTION = 0.3


def kernel_size_for(max_axial_sd: float) -> int:
    """Odd kernel size (px) holding a Gaussian of ``max_axial_sd`` to 3 sd (49 for the narrow range)."""
    return max(49, 2 * math.ceil(3 * max_axial_sd) + 1)


def random_kernel(rng: np.random.Generator, size: int,
                  max_axial_sd: float = NARROW_AXIAL_SD) -> tuple[np.ndarray, float, str]:
    """One degradation kernel, padded to ``size``; also an along-axis-0 subsampling factor (1 = none).

    Weighted towards the microscope's axial model (elongated Gaussian within
    45 degrees of axis 0, often undersampled along it), with general blurs and
    near-identity cases so the network also learns when to leave an image alone.
    With ``max_axial_sd`` above 7.5 px, 30% of the axial samples are wider (up to it): coarse z steps
    (5x the pixel and more) put real axial blur near sd 12 px, where a base trained only to 7.5 px
    gains about 1 dB instead of 4. At 7.5 the random stream is that of earlier versions.
    """
    kind = rng.choice(["axial", "elongated", "isotropic", "line", "disc", "mild"],
                      p=[0.55, 0.1, 0.1, 0.05, 0.05, 0.15])
    factor = 1.0
    if kind == "axial":  # the microscope's axial model: elongated near axis 0, maybe undersampled
        sd = rng.uniform(1.0, NARROW_AXIAL_SD)
        if max_axial_sd > NARROW_AXIAL_SD and rng.uniform() < WIDE_AXIAL_FRACTION:
            sd = rng.uniform(NARROW_AXIAL_SD, max_axial_sd)
        k = gaussian_kernel2d(sd, rng.uniform(0.3, 1.0), rng.uniform(-45, 45))
        if rng.uniform() < 0.5:
            factor = float(rng.uniform(1.5, 5.0))
    elif kind == "elongated":
        k = gaussian_kernel2d(rng.uniform(0.5, 8.0), rng.uniform(0.3, 2.0), rng.uniform(0, 180))
    elif kind == "isotropic":
        s = rng.uniform(0.5, 4.0)
        k = gaussian_kernel2d(s, s)
    elif kind == "line":
        k = line_kernel2d(rng.uniform(3, min(25, 2 * (size // 2) - 2)), rng.uniform(0, 180))
    elif kind == "disc":
        k = disc_kernel2d(rng.uniform(1.0, 5.0))
    else:
        s = rng.uniform(0.3, 1.0)
        k = gaussian_kernel2d(s, s)
    k = k[: size, : size] if k.shape[0] > size else k
    return pad_kernel(k, size) / k.sum(), factor, str(kind)


def degrade(sharp: torch.Tensor, rng: np.random.Generator,
            max_axial_sd: float = NARROW_AXIAL_SD) -> torch.Tensor:
    """Blur, maybe subsample along axis 0, maybe add Poisson-Gaussian noise. (B,1,H,W) in and out."""
    b = sharp.shape[0]
    kernels, factors = [], []
    size = kernel_size_for(max_axial_sd)
    for _ in range(b):
        k, f, _ = random_kernel(rng, size, max_axial_sd)
        kernels.append(k)
        factors.append(f)
    blurred = conv2d_per_sample(sharp, torch.from_numpy(np.stack(kernels)))
    for i, f in enumerate(factors):
        if f > 1:
            blurred[i] = axial_forward(blurred[i], f, dim=-2, phase=float(rng.uniform(0, f)))
    if rng.uniform() < 0.3:
        photons = torch.from_numpy(10 ** rng.uniform(1.7, 3.5, (b, 1, 1, 1)).astype(np.float32))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        blurred = torch.poisson(blurred.clamp(min=0) * photons, generator=gen) / photons
        read = torch.from_numpy(rng.uniform(0, 0.02, (b, 1, 1, 1)).astype(np.float32))
        blurred = blurred + read * torch.randn(blurred.shape, generator=gen)
    return blurred
