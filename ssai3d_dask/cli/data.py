"""Commands about data: ``info``, ``simulate``, ``evaluate`` and the self-contained ``demo``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import click

from ssai3d_dask.cli.app import cli_progress, friendly_errors, main
from ssai3d_dask.errors import Ssai3dError
from ssai3d_dask.cli.options import (channel_option, emit_json, json_option, level_option, positional, time_option,
                                     voxel_option)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@voxel_option
@channel_option
@time_option
@level_option
@json_option
@click.option("--psf", "psf", is_flag=True,
              help="Estimate the stack's axial blur relative to its lateral blur from the data (reads ~100 small "
                   "windows) and print only that, and the width `adapt --psf-bank auto` (the default) trains on: "
                   "the estimate times --psf-lean (1.15 by default). `--psf-bank wide` centres its bank past it.")
@friendly_errors
def info(path, voxel_size, channel, time_, level, json_to, psf):
    """Describe a volume without reading voxel data: shape, dtype, chunks, voxel size, levels, size on disk."""
    from ssai3d_dask.io.describe import describe

    if psf:
        from ssai3d_dask.adaptation.psf_estimate import estimate_axial_blur
        from ssai3d_dask.adaptation.sampling import volume_statistics
        from ssai3d_dask.io.volume import open_volume

        vol = open_volume(path, voxel_size, channel=channel, time=time_)
        est = estimate_axial_blur(vol, volume_statistics(vol))
        if not emit_json(est.to_dict(), json_to):
            from ssai3d_dask.settings import AdaptSettings

            lean = AdaptSettings().psf_lean
            click.echo(f"{est}\n`adapt --psf-bank auto` trains on one PSF of sd {lean * est.sigma_px:.2f} px along z "
                       f"(the estimate x {lean:g}, --psf-lean)")
        return
    d = describe(path, voxel_size, channel, time_, level)
    if emit_json(d, json_to):
        return
    for k, v in d.items():
        click.echo(f"{k:>18}: {v}")


@main.command()
@click.argument("kind", type=click.Choice(["beads", "strands", "spheres", "cylinders", "tubes", "tissue"]))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--shape", nargs=3, type=int, default=(64, 128, 128), show_default=True, metavar="Z Y X",
              help="Ground-truth shape in voxels on the isotropic grid.")
@click.option("--voxel-size", nargs=3, type=float, default=(0.1, 0.1, 0.1), show_default=True, metavar="DZ DY DX",
              help="Ground-truth voxel size in micrometres.")
@click.option("--anisotropy", type=float, default=1.0, show_default=True,
              help="z undersampling factor of the raw stack: raw dz = DZ x F (integer or fractional).")
@click.option("--sigma-lateral", type=float, default=None, help="Lateral PSF sd in truth voxels (default per kind).")
@click.option("--sigma-axial", type=float, default=None, help="Axial PSF sd in truth voxels (default per kind).")
@click.option("--shift-variant", is_flag=True, help="Axial PSF width and tilt vary across x.")
@click.option("--photons", type=float, default=None, help="Expected photons at intensity 1 (adds Poisson noise).")
@click.option("--read-noise", type=float, default=0.0, show_default=True,
              help="Gaussian noise sd, in units of the brightest structure.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "uint16"]), default="float32", show_default=True,
              help="Stored type; uint16 maps intensity 1 to 65535.")
@click.option("--chunks", nargs=3, type=int, default=(64, 128, 128), show_default=True, metavar="Z Y X")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@friendly_errors
def simulate(kind, out, shape, voxel_size, anisotropy, sigma_lateral, sigma_axial, shift_variant, photons,
             read_noise, seed, dtype, chunks, overwrite):
    """Make a phantom with ground truth and its anisotropic raw stack.

    OUT is a folder receiving raw.ome.zarr, truth.ome.zarr and simulation.json; if OUT ends in .tif/.tiff,
    the raw stack goes there, the truth to *_truth.tif and the parameters to *.json.
    """
    from ssai3d_dask.evaluation.simio import write_simulation
    from ssai3d_dask.evaluation.simulate import DEFAULT_MODELS, ForwardModel, simulate as run_sim

    base = DEFAULT_MODELS[kind]
    model = ForwardModel(sigma_lateral if sigma_lateral is not None else base.sigma_lateral_px,
                         sigma_axial if sigma_axial is not None else base.sigma_axial_px,
                         anisotropy, shift_variant, photons, read_noise)
    sim = run_sim(kind, shape, seed, voxel_size, model)
    paths = write_simulation(sim, out, dtype=dtype, chunks=chunks, overwrite=overwrite)
    for p in paths:
        click.echo(str(p))


@main.command()
@click.argument("pred", type=click.Path(path_type=Path))
@click.option("--truth", type=click.Path(path_type=Path), required=True, help="Ground-truth volume.")
@click.option("--raw", type=click.Path(path_type=Path), default=None,
              help="Raw stack: also scored after linear z interpolation onto the truth grid.")
@click.option("--data-range", type=float, default=None, help="L for PSNR/SSIM (default: truth max - min).")
@click.option("--beads", is_flag=True, help="Also report bead FWHM per axis (um).")
@json_option
@friendly_errors
def evaluate(pred, truth, raw, data_range, beads, json_to):
    """Score a restored volume against ground truth: PSNR, SSIM, MS-SSIM, MSE, NCC, Fourier resolution.

    The table is printed and written as JSON beside PRED (PRED.metrics.json) unless --json says otherwise.
    """
    from ssai3d_dask.evaluation.evaluate import evaluate_paths, format_table

    table = evaluate_paths(pred, truth, raw, data_range, beads)
    json_to = json_to or Path(str(pred).rstrip("/") + ".metrics.json")
    if not emit_json(table, json_to):
        click.echo(format_table(table))
        click.echo(f"wrote {json_to}")


@main.command()
@positional("out_dir", old="--out", required=False, metavar="[OUT]", type=click.Path(path_type=Path))
@click.option("--shape", nargs=3, type=int, default=(64, 192, 192), show_default=True, metavar="Z Y X",
              help="Ground-truth shape; the raw stack has Z / 4 planes.")
@click.option("--iterations", type=int, default=150, show_default=True,
              help="Fine-tuning steps (150 keeps the demo near two minutes on 2 CPU cores; 3000 lets adaptation run "
                   "to its validation plateau, as `adapt` does: ~1100 steps, +0.3 dB here).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=None, help="LocalCluster workers.")
@friendly_errors
def demo(out_dir, shape, iterations, seed, workers):
    """Simulate a tissue-like stack (textured nuclei among neurites) at anisotropy 4 with noise, adapt the
    shipped model to it, restore, score against the truth and write report.png (XY, XZ, YZ views) into OUT
    (default: demo-output)."""
    from ssai3d_dask.evaluation.demo import format_demo, run_demo

    out_dir = out_dir or Path("demo-output")
    click.echo(format_demo(run_demo(out_dir, tuple(shape), iterations, seed, workers, progress=cli_progress()),
                           out_dir))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--serve", is_flag=True,
              help="Serve PATH's folder on 127.0.0.1 (with CORS) until Ctrl-C, so a browser on this machine reads it.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port for --serve (0: any free one).")
@click.option("--data-url", default=None,
              help="Where the browser reads PATH from when it is hosted elsewhere (https://..., s3://...); default: "
                   "http://127.0.0.1:PORT/NAME as --serve serves it.")
@click.option("--viewer", default=None, help="Neuroglancer client to open (default: the public demo client).")
@friendly_errors
def view(path, serve, port, data_url, viewer):
    """Print a neuroglancer URL for an OME-Zarr: its contrast from the omero window, XY above XZ and YZ with
    z vertical."""
    import time

    from ssai3d_dask.io.viewers import DEFAULT_VIEWER, neuroglancer_state, neuroglancer_url
    from ssai3d_dask.io.viewers import serve as start_server

    if not path.exists():
        raise Ssai3dError(f"{path} not found; give an OME-Zarr written by ssai3d (or any NGFF image)")
    server = start_server(path.resolve().parent, port) if serve else None
    if server is not None:
        port = server.server_address[1]
    url = data_url or f"http://127.0.0.1:{port}/{quote(path.resolve().name)}"
    click.echo(neuroglancer_url(neuroglancer_state(path, url), viewer or DEFAULT_VIEWER))
    if server is None:
        if data_url is None:
            click.echo(f"(the URL reads {url}: run with --serve to serve it, or give --data-url)", err=True)
        return
    click.echo(f"serving {path.resolve().parent} on http://127.0.0.1:{port}; Ctrl-C stops", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
