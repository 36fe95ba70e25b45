"""The ``ssai3d`` command. Subcommands mirror the pipeline stages and stay thin.

Only this module configures logging and progress display; errors in input
become one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from .errors import Ssai3dError

logger = logging.getLogger("ssai3d_dask")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ssai3d_dask").setLevel(level)
    for noisy in ("distributed", "numcodecs", "PIL", "matplotlib", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)


def friendly_errors(fn):
    """Turn our input errors into one-line messages and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Ssai3dError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


click.ClickException.exit_code = 2

voxel_option = click.option(
    "--voxel-size", nargs=3, type=float, default=None, metavar="DZ DY DX",
    help="Voxel size in micrometres (z, y, x). Overrides the file's metadata; required when the file has none.")
channel_option = click.option("--channel", type=int, default=None, help="Channel index for multi-channel data.")
time_option = click.option("--time", "time_", type=int, default=None, help="Time point for time series.")
level_option = click.option("--level", type=int, default=0, show_default=True,
                            help="OME-Zarr pyramid level to read (0 = full resolution).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="ssai3d-dask")
def main(verbose: int, quiet: bool) -> None:
    """ssai3d: isotropic 3D resolution from a single anisotropic stack (SSAI-3D), out of core on Dask.

    Typical use: `ssai3d info STACK` to check voxel sizes, `ssai3d run STACK OUT.ome.zarr` to adapt the
    shipped model to the stack and restore it, `ssai3d demo` for a self-contained example.
    """
    _setup_logging(verbose, quiet)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@voxel_option
@channel_option
@time_option
@level_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def info(path, voxel_size, channel, time_, level, as_json):
    """Describe a volume without reading voxel data: shape, dtype, chunks, voxel size, levels, size on disk."""
    from .describe import describe

    d = describe(path, voxel_size, channel, time_, level)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        click.echo(f"{k:>18}: {v}")


@main.command()
@click.argument("kind", type=click.Choice(["beads", "strands", "spheres", "cylinders", "tubes"]))
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
    from .simio import write_simulation
    from .simulate import DEFAULT_MODELS, ForwardModel, simulate as run_sim

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
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the table as JSON here (default: PRED.metrics.json beside PRED).")
@friendly_errors
def evaluate(pred, truth, raw, data_range, beads, json_out):
    """Score a restored volume against ground truth: PSNR, SSIM, MS-SSIM, MSE, NCC, Fourier resolution."""
    from .evaluate import evaluate_paths, format_table

    table = evaluate_paths(pred, truth, raw, data_range, beads)
    click.echo(format_table(table))
    json_out = json_out or Path(str(pred).rstrip("/") + ".metrics.json")
    json_out.write_text(json.dumps(table, indent=2))
    click.echo(f"wrote {json_out}")


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["small", "gopro-width32", "paper"]), default="small", show_default=True,
              help="Architecture to train.")
@click.option("--iterations", type=int, default=5000, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--patch", type=int, default=None, help="Training patch size in px (default: the preset's).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak AdamW learning rate (cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@friendly_errors
def pretrain(out, preset, iterations, batch_size, patch, lr, seed, device):
    """Pretrain a base deblurring model offline (no downloads) and write it to OUT (.pt).

    Rerunning with the same OUT resumes from OUT.resume.pt.
    """
    from .pretrain import PretrainSettings, pretrain as run

    settings = PretrainSettings(preset=preset, iterations=iterations, batch_size=batch_size, patch_px=patch, lr=lr,
                                seed=seed, device=device)
    click.echo(str(run(out, settings)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
