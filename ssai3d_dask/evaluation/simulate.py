"""Phantoms with ground truth and the anisotropic forward model (paper Methods, simulations).

Every phantom is made on an isotropic grid (z, y, x); :func:`forward` blurs it
with an anisotropic (optionally shift-variant, rotated) Gaussian PSF, samples
z every ``z_factor`` voxels and adds Poisson and Gaussian noise. All random
choices come from one ``numpy.random.Generator`` seeded by the caller.

Kinds (``PHANTOMS``):

* ``beads``: Gaussian beads, sd 2 px (Fig. 2a).
* ``strands``: Bezier curves, curved laterally and flat axially, 1-4 px thick,
  binary (Fig. 2b; low lateral-axial similarity).
* ``spheres`` / ``cylinders``: high / low lateral-axial similarity (Fig. 3);
  cylinders stand along z, so they are discs laterally and bars axially.
* ``tubes``: randomly oriented tubes, mean thickness 4 px, intensity
  15000-65535, elastically deformed (Fig. 4c).
* ``tissue``: neural-tissue-like: textured ellipsoidal nuclei (dim, radius 4-9 px) among curved
  neurites of every orientation (1.5-3 px thick, bright), elastically deformed (the demo's phantom).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage, signal

from ssai3d_dask.io.volume import Volume, validate_voxel_size
from ssai3d_dask.ops.kernels import gaussian_kernel2d
from ssai3d_dask.ops.resample import subsample_z
from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)


def _splat(vol: np.ndarray, c: np.ndarray, reach, inside, value) -> None:
    """Max-combine a solid body into ``vol`` in place: voxels within ``reach`` (per axis) of the centre ``c``
    where ``inside(dz, dy, dx)`` holds take ``value`` (a number, or a function of the box's slices)."""
    lo = np.maximum(np.floor(c - reach).astype(int), 0)
    hi = np.minimum(np.ceil(c + reach).astype(int) + 1, vol.shape)
    if np.any(lo >= hi):
        return
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    zz, yy, xx = np.ogrid[box]
    mask = inside(zz - c[0], yy - c[1], xx - c[2])
    sub = vol[box]
    np.maximum(sub, np.where(mask, value(box) if callable(value) else value, 0).astype(vol.dtype), out=sub)


def _splat_spheres(vol: np.ndarray, centers: np.ndarray, radii: np.ndarray, values: np.ndarray) -> None:
    """Draw solid balls (max-combined) into ``vol`` in place."""
    for c, r, v in zip(centers, radii, values):
        _splat(vol, c, r, lambda dz, dy, dx, r=r: dz ** 2 + dy ** 2 + dx ** 2 <= r * r, v)


def _render_curves(shape: Sequence[int], curves: list[tuple[np.ndarray, float, float]]) -> np.ndarray:
    """Tubes around polylines: a voxel takes the value of its nearest centreline voxel if within its radius.

    ``curves`` holds (points (N, 3) in voxel coordinates, radius px, value).
    One Euclidean distance transform renders all curves at once.
    """
    shape = tuple(shape)
    centre = np.zeros(shape, bool)
    radius = np.zeros(shape, np.float32)
    value = np.zeros(shape, np.float32)
    for pts, r, v in curves:
        idx = np.round(pts).astype(int)
        keep = np.all((idx >= 0) & (idx < shape), axis=1)
        idx = idx[keep]
        if not len(idx):
            continue
        sl = tuple(idx.T)
        centre[sl] = True
        radius[sl] = np.maximum(radius[sl], r)
        value[sl] = np.maximum(value[sl], v)
    if not centre.any():
        return value
    dist, nearest = ndimage.distance_transform_edt(~centre, return_indices=True)
    near = tuple(nearest)
    return np.where(dist <= radius[near], value[near], 0).astype(np.float32)


def beads(shape: Sequence[int], rng: np.random.Generator, n_beads: int = 50, sd_px: float = 2.0) -> np.ndarray:
    """Isotropic Gaussian beads (sd ``sd_px``) of random intensity in [0.5, 1], at least 4 sd from the border."""
    vol = np.zeros(shape, np.float32)
    margin = 4 * sd_px
    pts = rng.uniform(margin, np.array(shape) - margin, (n_beads, 3))
    amp = rng.uniform(0.5, 1.0, n_beads)
    r = int(math.ceil(4 * sd_px))
    for p, a in zip(pts, amp):
        c = np.round(p).astype(int)
        lo, hi = np.maximum(c - r, 0), np.minimum(c + r + 1, shape)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        g = np.exp(-((zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2) / (2 * sd_px**2))
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += (a * g).astype(np.float32)
    return vol


def _bezier(ctrl: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2, p3 = ctrl
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def strands(shape: Sequence[int], rng: np.random.Generator, n_strands: int | None = None,
            thickness_px: tuple[float, float] = (1.0, 4.0)) -> np.ndarray:
    """Binary strands: cubic Bezier curves in (y, x) at a constant z (flat axially)."""
    z, y, x = shape
    n = n_strands or max(4, int(z * y * x / 6000))  # ~10% of voxels filled, dense enough for small volumes
    curves = []
    for _ in range(n):
        zc = rng.uniform(0, z)
        ctrl = rng.uniform([-0.2 * y, -0.2 * x], [1.2 * y, 1.2 * x], (4, 2))
        length = np.sum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))
        pts2 = _bezier(ctrl, int(max(2 * length, 16)))
        pts = np.column_stack([np.full(len(pts2), zc), pts2])
        curves.append((pts, max(rng.uniform(*thickness_px) / 2, 0.5), 1.0))
    return _render_curves(shape, curves)


def spheres(shape: Sequence[int], rng: np.random.Generator, n: int | None = None,
            radius_px: tuple[float, float] = (3.0, 8.0)) -> np.ndarray:
    """Solid spheres with intensity in [0.5, 1] (high lateral-axial similarity)."""
    n = n or max(4, int(np.prod(shape) / 4000))
    vol = np.zeros(shape, np.float32)
    _splat_spheres(vol, rng.uniform(0, shape, (n, 3)), rng.uniform(*radius_px, n),
                   rng.uniform(0.5, 1.0, n).astype(np.float32))
    return vol


def cylinders(shape: Sequence[int], rng: np.random.Generator, n: int | None = None,
              radius_px: tuple[float, float] = (3.0, 8.0)) -> np.ndarray:
    """Cylinders along z of random height: discs laterally, bars axially (low similarity)."""
    z, y, x = shape
    n = n or max(4, int(y * x / 400))
    vol = np.zeros(shape, np.float32)
    yy, xx = np.ogrid[0:y, 0:x]
    for _ in range(n):
        cy, cx, r = rng.uniform(0, y), rng.uniform(0, x), rng.uniform(*radius_px)
        z0 = rng.uniform(-0.2 * z, 0.8 * z)
        z1 = z0 + rng.uniform(0.2 * z, 0.8 * z)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32) * rng.uniform(0.5, 1.0)
        sl = slice(max(int(z0), 0), min(int(z1), z))
        np.maximum(vol[sl], disc[None], out=vol[sl])
    return vol


def elastic_deform(vol: np.ndarray, rng: np.random.Generator, grid_px: float = 32.0,
                   amplitude_px: float = 4.0) -> np.ndarray:
    """Smooth random displacement (B-spline-like from a coarse random grid), linear resampling."""
    coarse = [max(2, int(math.ceil(s / grid_px)) + 1) for s in vol.shape]
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in vol.shape], indexing="ij"))
    for axis in range(3):
        d = rng.normal(0, amplitude_px, coarse).astype(np.float32)
        coords[axis] += ndimage.zoom(d, [s / c for s, c in zip(vol.shape, coarse)], order=3)[
            tuple(slice(0, s) for s in vol.shape)]
    return ndimage.map_coordinates(vol, coords, order=1, mode="constant").astype(np.float32)


def tubes(shape: Sequence[int], rng: np.random.Generator, n: int | None = None,
          thickness_px: float = 4.0, deform: bool = True) -> np.ndarray:
    """Randomly oriented straight tubes (mean thickness 4 px, 15000-65535), elastically deformed."""
    n = n or max(4, int(np.prod(shape) / 12000))
    diag = float(np.linalg.norm(shape))
    curves = []
    for _ in range(n):
        c = rng.uniform(0, shape)
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        length = rng.uniform(0.2, 0.6) * diag
        t = np.linspace(-length / 2, length / 2, int(2 * length))
        curves.append((c + t[:, None] * d, max(0.75, rng.normal(thickness_px, 1.0) / 2),
                       rng.uniform(15000, 65535) / 65535.0))
    vol = _render_curves(shape, curves)
    return elastic_deform(vol, rng) if deform else vol


def tissue(shape: Sequence[int], rng: np.random.Generator, nuclei_fraction: float = 0.12,
           neurites: int | None = None) -> np.ndarray:
    """Nuclei and neurites: what an XZ view of stained neural tissue shows.

    Nuclei: ellipsoids (semi-axes 4-9 px, each axis drawn apart) filling about ``nuclei_fraction`` of the
    volume, intensity 0.25-0.5 with a chromatin-like texture (smoothed noise, +-25 %). Neurites: cubic
    Bezier curves through the volume in 3D (every orientation, so some are nearly axial), radius 0.75-1.5
    px, intensity 0.6-1.0, drawn over the nuclei. A gentle elastic deformation bends everything.
    """
    shape = tuple(int(s) for s in shape)
    vol = np.zeros(shape, np.float32)
    mean_volume = 4 / 3 * math.pi * 6.5**3
    n_nuclei = max(2, int(nuclei_fraction * np.prod(shape) / mean_volume))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    texture = np.clip(1 + 0.25 * texture / (texture.std() + 1e-6), 0.5, 1.5)
    for c, axes, v in zip(rng.uniform(0, shape, (n_nuclei, 3)), rng.uniform(4, 9, (n_nuclei, 3)),
                          rng.uniform(0.25, 0.5, n_nuclei)):
        _splat(vol, c, axes, lambda dz, dy, dx, a=axes: (dz / a[0]) ** 2 + (dy / a[1]) ** 2 + (dx / a[2]) ** 2 <= 1,
               lambda box, v=v: v * texture[box])
    n = neurites or max(3, int(np.prod(shape) / 40000))
    size = np.array(shape, np.float64)
    curves = []
    for _ in range(n):
        ctrl = rng.uniform(-0.2 * size, 1.2 * size, (4, 3))
        length = np.sum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))
        curves.append((_bezier(ctrl, int(max(2 * length, 16))), rng.uniform(0.75, 1.5), rng.uniform(0.6, 1.0)))
    vol = np.maximum(vol, _render_curves(shape, curves))
    return np.clip(elastic_deform(vol, rng, amplitude_px=2.0), 0, 1)


PHANTOMS: dict[str, Callable[..., np.ndarray]] = {
    "beads": beads, "strands": strands, "spheres": spheres, "cylinders": cylinders, "tubes": tubes,
    "tissue": tissue,
}


@dataclass
class ForwardModel:
    """The anisotropic image formation model.

    Parameters (px of the isotropic truth grid unless stated)
    ----------
    sigma_lateral_px, sigma_axial_px : float
        Gaussian PSF sd across and along z.
    z_factor : float
        Raw z step / truth voxel (integer or fractional); 1 = no undersampling.
    shift_variant : bool
        Vary axial sd (x0.7..x1.3) and tilt (-20..20 deg, in the z-x plane) across x.
    photons : float or None
        Expected photons at intensity 1 (Poisson noise); None = no Poisson noise.
    read_noise : float
        Gaussian noise sd, in units of intensity 1.
    """

    sigma_lateral_px: float = 0.5
    sigma_axial_px: float = 4.0
    z_factor: float = 1.0
    shift_variant: bool = False
    photons: float | None = None
    read_noise: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _blur_zx(vol: np.ndarray, sigma_axial: float, sigma_lateral: float, angle_deg: float) -> np.ndarray:
    """Blur with a Gaussian rotated in the z-x plane (then laterally along y)."""
    k = gaussian_kernel2d(sigma_axial, sigma_lateral, angle_deg)
    out = signal.fftconvolve(np.pad(vol, [(k.shape[0] // 2,) * 2, (0, 0), (k.shape[1] // 2,) * 2], mode="reflect"),
                             k[:, None, :], mode="valid", axes=(0, 2))
    return ndimage.gaussian_filter1d(out, sigma_lateral, axis=1, mode="reflect").astype(np.float32)


def blur(vol: np.ndarray, model: ForwardModel) -> np.ndarray:
    """Apply the PSF of ``model`` (shift-invariant or -variant) to an isotropic volume."""
    if not model.shift_variant:
        sig = (model.sigma_axial_px, model.sigma_lateral_px, model.sigma_lateral_px)
        return ndimage.gaussian_filter(vol, sig, mode="reflect", truncate=4.0).astype(np.float32)
    # Shift-variant: 4 PSFs across x, linearly blended (weights form a partition of unity).
    n_zones = 4
    scales = np.linspace(0.7, 1.3, n_zones)
    angles = np.linspace(-20, 20, n_zones)
    x = np.linspace(0, n_zones - 1, vol.shape[2])
    out = np.zeros_like(vol)
    for i in range(n_zones):
        w = np.clip(1 - np.abs(x - i), 0, 1).astype(np.float32)
        out += _blur_zx(vol, model.sigma_axial_px * scales[i], model.sigma_lateral_px, angles[i]) * w
    return out


def forward(truth: np.ndarray, model: ForwardModel, rng: np.random.Generator) -> np.ndarray:
    """Raw anisotropic stack from an isotropic truth (float32, same intensity units)."""
    raw = subsample_z(blur(truth, model), model.z_factor)
    if model.photons:
        raw = rng.poisson(np.clip(raw, 0, None) * model.photons).astype(np.float32) / model.photons
    if model.read_noise:
        raw = raw + rng.normal(0, model.read_noise, raw.shape).astype(np.float32)
    return raw.astype(np.float32)


@dataclass
class Simulation:
    """A phantom with its raw acquisition.

    ``truth`` is (z, y, x) on the isotropic grid at ``voxel_size_um``; ``raw``
    has z sampled every ``model.z_factor`` voxels, voxel ``raw_voxel_size_um``.
    Both are float32, intensity 1 = the brightest structure.
    """

    kind: str
    truth: np.ndarray
    raw: np.ndarray
    voxel_size_um: tuple[float, float, float]
    model: ForwardModel
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def raw_voxel_size_um(self) -> tuple[float, float, float]:
        dz, dy, dx = self.voxel_size_um
        return (float(f"{dz * self.model.z_factor:.12g}"), dy, dx)

    def describe(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "shape_truth": list(self.truth.shape),
                "shape_raw": list(self.raw.shape), "voxel_size_um": list(self.voxel_size_um),
                "raw_voxel_size_um": list(self.raw_voxel_size_um), "forward_model": self.model.to_dict(),
                "phantom": self.params}


#: Default forward models per phantom (paper values where it gives them).
DEFAULT_MODELS: dict[str, ForwardModel] = {
    # 200 nm lateral / 700 nm axial FWHM at 100 nm voxels: sd = FWHM / 2.355 px.
    "beads": ForwardModel(sigma_lateral_px=2.0 / 2.355, sigma_axial_px=7.0 / 2.355),
    "strands": ForwardModel(0.5, 4.0),
    "spheres": ForwardModel(0.5, 4.0),
    "cylinders": ForwardModel(0.5, 4.0),
    "tubes": ForwardModel(0.5, 4.0),
    "tissue": ForwardModel(0.5, 4.0, photons=300, read_noise=0.01),
}


def simulate(kind: str, shape: Sequence[int] = (64, 128, 128), seed: int = 0,
             voxel_size_um: Sequence[float] = (0.1, 0.1, 0.1), model: ForwardModel | None = None,
             **phantom_kwargs) -> Simulation:
    """Make a phantom and its raw stack, deterministically from ``seed``.

    Parameters
    ----------
    kind : str
        One of :data:`PHANTOMS`.
    shape : (z, y, x)
        Truth shape on the isotropic grid.
    voxel_size_um : (dz, dy, dx)
        Truth voxel size.
    model : ForwardModel, optional
        Defaults to :data:`DEFAULT_MODELS` [kind].
    """
    if kind not in PHANTOMS:
        raise SettingsError(f"unknown phantom {kind!r}; choose one of {', '.join(PHANTOMS)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise SettingsError(f"phantom shape must be 3 sizes >= 8 (z, y, x), got {shape}")
    voxel_size_um = validate_voxel_size(voxel_size_um, "the phantom (--voxel-size)")
    model = model or DEFAULT_MODELS[kind]
    if not (math.isfinite(model.z_factor) and model.z_factor >= 1):
        raise SettingsError(f"--anisotropy {model.z_factor} must be a finite number >= 1 (raw dz / truth dz)")
    if not (model.sigma_axial_px > 0 and model.sigma_lateral_px > 0):
        raise SettingsError("PSF sd (--sigma-axial, --sigma-lateral) must be positive")
    need = int(np.prod(shape, dtype=np.float64)) * 4 * 6  # float32 truth, raw and the blur's temporaries
    import psutil

    if need > psutil.virtual_memory().available:
        raise SettingsError(f"phantom {shape} needs about {need / 2**30:.1f} GiB of memory, more than is free "
                            f"({psutil.virtual_memory().available / 2**30:.1f} GiB); give a smaller --shape")
    rng = np.random.default_rng(seed)
    truth = PHANTOMS[kind](shape, rng, **phantom_kwargs).astype(np.float32)
    raw = forward(truth, model, rng)
    return Simulation(kind, truth, raw, tuple(float(v) for v in voxel_size_um), model, seed,  # type: ignore[arg-type]
                      {k: v for k, v in phantom_kwargs.items()})


def phantom_volume(kind: str, seed: int) -> Volume:
    """A phantom raw stack for the meta-dataset (z undersampled x3, PSF sd 0.5 / 3 px, mild noise)."""
    noise = {"photons": 200.0, "read_noise": 0.01} if kind == "tubes" else {}
    sim = simulate(kind, (48, 128, 128), seed=seed, model=ForwardModel(0.5, 3.0, z_factor=3, **noise))
    return Volume.from_array(sim.raw, sim.raw_voxel_size_um, chunks=(8, 64, 64), source=f"phantom:{kind}")
