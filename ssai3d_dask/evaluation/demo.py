"""``ssai3d demo``: the whole pipeline on a simulated stack with ground truth."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ssai3d_dask.progress import ProgressLike
from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.settings import AdaptSettings
from ssai3d_dask.restoration.cluster import close_client, make_client
from ssai3d_dask.evaluation.evaluate import onto_truth_grid
from ssai3d_dask.settings import FinetuneSettings
from ssai3d_dask.evaluation.metrics import compare, fourier_resolution
from ssai3d_dask.io.omezarr import write_multiscale
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.evaluation.simulate import ForwardModel, forward, tissue
from ssai3d_dask.io.volume import open_volume
from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)

Z_FACTOR = 4


def make_phantom(shape, seed: int):
    """Neural-tissue-like truth (textured nuclei among neurites of every orientation,
    :func:`ssai3d_dask.evaluation.simulate.tissue`), imaged at anisotropy 4 (axial PSF sd 3 px against 0.5
    laterally) with Poisson (300 photons at the brightest) and read noise."""
    rng = np.random.default_rng(seed)
    truth = tissue(shape, rng).astype(np.float32)
    model = ForwardModel(sigma_lateral_px=0.5, sigma_axial_px=3.0, z_factor=Z_FACTOR, photons=300, read_noise=0.01)
    raw = forward(truth, model, rng)
    to16 = lambda a: np.round(np.clip(a, 0, 1) * 60000 + 500).astype(np.uint16)  # noqa: E731  offset = dark level
    return to16(truth), to16(raw), model


def report_png(path: Path, volumes: dict[str, np.ndarray], title: str) -> None:
    """Orthogonal views (XY, XZ, YZ) and the XZ Fourier spectrum for each volume, one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(volumes)
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.2 * n), squeeze=False)
    ref = next(iter(volumes.values()))
    lo, hi = np.percentile(ref, (0.5, 99.8))
    for i, (name, v) in enumerate(volumes.items()):
        z, y, x = (s // 2 for s in v.shape)
        views = {"XY": v[z], "XZ": v[:, y, :], "YZ": v[:, :, x]}
        for j, (vn, img) in enumerate(views.items()):
            axes[i, j].imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect="equal")
            axes[i, j].set_title(f"{name} {vn}", fontsize=9)
            axes[i, j].set_axis_off()
        spec = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(views["XZ"] - views["XZ"].mean()))))
        axes[i, 3].imshow(spec, cmap="magma", aspect="auto")
        axes[i, 3].set_title(f"{name} XZ spectrum", fontsize=9)
        axes[i, 3].set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_demo(out_dir: Path, shape=(64, 192, 192), iterations: int = 150, seed: int = 0,
             workers: int | None = None, progress: ProgressLike = None) -> dict:
    """Simulate, adapt, restore and score; write OUT_DIR. Returns the metrics table (``_info`` holds the
    phantom, the forward model and the seconds taken); :func:`format_demo` makes it text."""
    if len(shape) != 3 or shape[0] < 4 * Z_FACTOR or min(shape[1:]) < 64:
        raise SettingsError(f"demo --shape {tuple(shape)} is too small: z needs at least {4 * Z_FACTOR} (the raw "
                            f"stack has z / {Z_FACTOR} planes) and y, x at least 64 (the training patch)")
    if iterations < 1:
        raise SettingsError(f"demo --iterations must be at least 1, got {iterations}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth, raw, model = make_phantom(shape, seed)
    vox = (0.1 * Z_FACTOR, 0.1, 0.1)
    write_multiscale(raw, out_dir / "raw.ome.zarr", vox, (16, 64, 64), overwrite=True, name="raw")
    write_multiscale(truth, out_dir / "truth.ome.zarr", (0.1, 0.1, 0.1), (64, 64, 64), overwrite=True, name="truth")
    vol = open_volume(out_dir / "raw.ome.zarr")
    settings = AdaptSettings(n_patches=128, patch_px=64,
                             finetune=FinetuneSettings(iterations=iterations, batch_size=8), seed=seed)
    adapt(vol, out_dir / "model", settings, overwrite=True, progress=progress)
    client = make_client(workers=workers)
    try:
        restore(vol, out_dir / "model", out_dir / "restored.ome.zarr",
                RestoreSettings(chunks=(64, 96, 96), region=(64, 192, 192), halo=32), overwrite=True, client=client,
                progress=progress)
    finally:
        close_client(client)
    restored = open_volume(out_dir / "restored.ome.zarr").data.compute().astype(np.float32)
    t = open_volume(out_dir / "truth.ome.zarr")
    interp = np.asarray(onto_truth_grid(vol, t), np.float32)
    truth_f = truth.astype(np.float32)
    table = {"raw (linear z)": compare(interp, truth_f, 65535.0), "ssai3d": compare(restored, truth_f, 65535.0)}
    for name, v in (("raw (linear z)", interp), ("ssai3d", restored), ("truth", truth_f)):
        table.setdefault(name, {}).update(
            {f"fourier_res_{k}_um": r for k, r in fourier_resolution(v, (0.1, 0.1, 0.1)).items()})
    table["_info"] = {"shape_truth": list(shape), "z_factor": Z_FACTOR, "forward_model": model.to_dict(),
                      "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "metrics.json").write_text(json.dumps(table, indent=2))
    report_png(out_dir / "report.png", {"raw (linear z)": interp, "ssai3d": restored, "truth": truth_f},
               f"ssai3d demo: PSNR {table['raw (linear z)']['psnr_db']:.2f} -> {table['ssai3d']['psnr_db']:.2f} dB,"
               f" SSIM {table['raw (linear z)']['ssim']:.3f} -> {table['ssai3d']['ssim']:.3f} (L = 65535)")
    return table


def format_demo(table: dict, out_dir: Path) -> str:
    """The demo's metrics table and what it wrote, as text."""
    from ssai3d_dask.evaluation.evaluate import format_table

    return (format_table({k: v for k, v in table.items() if not k.startswith("_")})
            + f"\nwrote {out_dir}/ (raw, restored, truth OME-Zarr; metrics.json; report.png) in "
            f"{table['_info']['seconds']:.0f} s")
