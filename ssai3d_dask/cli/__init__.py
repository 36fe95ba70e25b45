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

from ssai3d_dask.errors import Ssai3dError

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
channels_option = click.option(
    "--channel", default=None, metavar="SEL",
    help="Channels to process: an index, a list (0,2), a range (1-3) or all (default: all). With several, the "
         "output keeps the channel axis and each channel gets its own model (MODEL_DIR/c0, c1, ...).")
times_option = click.option(
    "--time", "time_", default=None, metavar="SEL",
    help="Time points to process, like --channel (default: all); several keep the time axis in the output.")
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
    from ssai3d_dask.io.describe import describe

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
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the table as JSON here (default: PRED.metrics.json beside PRED).")
@friendly_errors
def evaluate(pred, truth, raw, data_range, beads, json_out):
    """Score a restored volume against ground truth: PSNR, SSIM, MS-SSIM, MSE, NCC, Fourier resolution."""
    from ssai3d_dask.evaluation.evaluate import evaluate_paths, format_table

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
@click.option("--init", default=None,
              help="Warm start from this checkpoint ('base' = the shipped model) with a fresh optimizer and "
                   "cosine schedule; use another --seed so it sees new crops.")
@friendly_errors
def pretrain(out, preset, iterations, batch_size, patch, lr, seed, device, init):
    """Pretrain a base deblurring model offline (no downloads) and write it to OUT (.pt).

    Rerunning with the same OUT resumes from OUT.resume.pt.
    """
    from ssai3d_dask.adaptation.pretrain import PretrainSettings, pretrain as run

    settings = PretrainSettings(preset=preset, iterations=iterations, batch_size=batch_size, patch_px=patch, lr=lr,
                                seed=seed, device=device, init=init)
    click.echo(str(run(out, settings)))


def _adapt_options(fn):
    opts = [
        click.option("--base", default="base", show_default=True,
                     help="Base model: 'base' (shipped), a checkpoint path (ours or official NAFNet .pth)."),
        click.option("--patches", "n_patches", type=int, default=256, show_default=True,
                     help="Lateral patches to sample from the stack."),
        click.option("--patch", "patch_px", type=int, default=96, show_default=True,
                     help="Patch size in px (multiple of 16)."),
        click.option("--iterations", type=int, default=300, show_default=True, help="Fine-tuning steps."),
        click.option("--batch-size", type=int, default=8, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate (paper: 1e-3)."),
        click.option("--layers-fraction", type=float, default=0.1, show_default=True,
                     help="Fraction of layers to fine-tune (1.0 = full fine-tuning)."),
        click.option("--selection", type=click.Choice(["surgeon", "snip", "random", "all"]), default="surgeon",
                     show_default=True, help="How layers are chosen: the shipped surgeon, normalised snip alone, "
                                             "or random/all for ablations."),
        click.option("--denoise", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="Denoise lateral planes (and axial slices at inference); auto decides from the noise level."),
        click.option("--sigmas", type=str, default="3,4,5,6,7", show_default=True,
                     help="PSF bank axial Gaussian sd in px (comma list)."),
        click.option("--angles", type=str, default="-45,-22.5,0,22.5,45", show_default=True,
                     help="PSF bank orientations in degrees (comma list)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _adapt_settings(base, n_patches, patch_px, iterations, batch_size, lr, layers_fraction, selection, denoise,
                    sigmas, angles, seed, device):
    from ssai3d_dask.adaptation.adapt import AdaptSettings
    from ssai3d_dask.restoration.cluster import gpu_count
    from ssai3d_dask.adaptation.finetune import FinetuneSettings

    dev = ("cuda" if gpu_count() else "cpu") if device == "auto" else device
    try:
        sig = tuple(float(v) for v in sigmas.split(","))
        ang = tuple(float(v) for v in angles.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"--sigmas/--angles take comma-separated numbers ({exc})") from exc
    return AdaptSettings(base=base, n_patches=n_patches, patch_px=patch_px, sigmas_px=sig, angles_deg=ang,
                         denoise=denoise, layers_fraction=layers_fraction, selection=selection, seed=seed,
                         finetune=FinetuneSettings(iterations=iterations, batch_size=batch_size, lr=lr, seed=seed,
                                                   device=dev))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="MODEL_DIR to write.")
@voxel_option
@channels_option
@times_option
@_adapt_options
@click.option("--adapt-per-time", is_flag=True, help="One adaptation per time point too (MODEL_DIR/t3/c0).")
@click.option("--overwrite", is_flag=True, help="Replace an existing MODEL_DIR.")
@friendly_errors
def adapt(path, out_dir, voxel_size, channel, time_, adapt_per_time, overwrite, **kw):
    """Adapt the base model to a stack from its own lateral planes; write MODEL_DIR.

    MODEL_DIR holds model.pt, manifest.json (layers chosen with all 14 metrics, normalisation, PSF bank,
    settings, timings) and validation.png; for several channels, one such folder per channel (c0, c1, ...).
    """
    from ssai3d_dask.adaptation.adapt import adapt_dataset
    from ssai3d_dask.io.dataset import open_dataset

    ds = open_dataset(path, voxel_size, channel, time_)
    settings = _adapt_settings(**kw)
    adapt_dataset(ds, out_dir, settings, per_time=adapt_per_time, overwrite=overwrite)
    click.echo(str(out_dir))


def _restore_options(fn):
    opts = [
        click.option("--chunks", nargs=3, type=int, default=(64, 128, 128), show_default=True, metavar="Z Y X",
                     help="Output chunk shape in voxels (multiples of 16)."),
        click.option("--region", nargs=3, type=int, default=(128, 256, 256), show_default=True, metavar="Z Y X",
                     help="Output voxels per task (whole chunks); larger = less halo overhead, more memory."),
        click.option("--halo", type=int, default=None, help="Halo in output voxels (default: from the model)."),
        click.option("--view", type=click.Choice(["mean", "xz", "yz"]), default="mean", show_default=True,
                     help="Average XZ and YZ passes, or use one."),
        click.option("--dtype", type=click.Choice(["input", "float32", "uint16", "uint8"]), default="input",
                     show_default=True, help="Output data type."),
        click.option("--batch", type=int, default=None,
                     help="Slices per forward pass (default 4 on CPU, 32 on CUDA)."),
        click.option("--no-skip-empty", is_flag=True,
                     help="Compute every region, also those whose input holds no written data or only background "
                          "(by default they are pruned before scheduling and read as the background level)."),
        click.option("--shards", nargs=3, type=int, default=None, metavar="Z Y X",
                     help="Output shard shape in voxels (zarr v3): a whole number of --chunks that divides --region, "
                          "so one task writes whole shards. Default: one shard per region."),
        click.option("--no-shards", is_flag=True, help="Write one file per chunk instead of sharding."),
        click.option("--ngff-version", type=click.Choice(["0.5", "0.4"]), default="0.5", show_default=True,
                     help="0.5: zarr v3, sharded; 0.4: zarr v2 (unsharded) for older viewers."),
        click.option("--dry-run", is_flag=True,
                     help="Print the plan (regions, pruning, files, bytes, memory and time measured on one "
                          "calibration piece) and exit without writing anything."),
        click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (default: LocalCluster)."),
        click.option("--workers", type=int, default=None,
                     help="LocalCluster workers (default: one per GPU, else min(4, cores/2) for networks and one "
                          "per core for --method interp)."),
        click.option("--threads-per-worker", type=int, default=1, show_default=True),
        click.option("--memory-limit", default=None, help="Per-worker memory limit, e.g. 4GiB (default: auto)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output."),
        click.option("--resume", is_flag=True, help="Finish an interrupted output: only missing regions are computed."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _check_output(out, overwrite: bool, resume: bool, inputs=()) -> None:
    """Refuse an existing output, or one that is, holds or lies in an input, before a cluster starts or a
    model is adapted."""
    from ssai3d_dask.io.omezarr import check_output_apart

    check_output_apart(out, inputs)
    if Path(out).exists() and not (overwrite or resume):
        raise Ssai3dError(f"output {out} already exists; pass --overwrite to replace it or --resume to finish it")


def _restore_settings(method, chunks, region, halo, view, dtype, batch, no_skip_empty, device="auto",
                      psf_sigma_um=None, psf_file=None, rl_iterations=30, shards=None, no_shards=False,
                      ngff_version="0.5", **_):
    from ssai3d_dask.restoration.pipeline import RestoreSettings

    settings = RestoreSettings(method=method, chunks=tuple(chunks), region=tuple(region), halo=halo, view=view,
                               dtype=None if dtype == "input" else dtype, batch=batch, device=device,
                               skip_empty=not no_skip_empty, psf_sigma_um=tuple(psf_sigma_um) if psf_sigma_um else None,
                               psf_file=str(psf_file) if psf_file else None, rl_iterations=rl_iterations,
                               shards=tuple(shards) if shards else None, sharding=not no_shards,
                               ngff_version=ngff_version)
    if no_shards and shards:
        raise Ssai3dError("--shards and --no-shards contradict each other; give one")
    settings.validate()
    return settings


def _print_dry_run(ds, model_dir, out, settings, resume, workers, threads_per_worker, adapted=None, extra=()):
    from ssai3d_dask.restoration.dryrun import dry_run, format_report
    from ssai3d_dask.restoration.pipeline import prepare_restore, slice_models

    _, t, c, vol = next(ds.slices())
    if adapted is None:
        model_dir = slice_models(ds, model_dir, settings.method)[(t, c)]
    n = len(ds.volumes)
    if n > 1:
        extra = [f"dataset      {n} slices ({ds.axes}: {ds.lead_shape}); the figures above are for the first, "
                 f"the whole run costs about {n} times them", *extra]
    job = prepare_restore(vol, model_dir, settings, adapted=adapted)
    if workers is None:
        from ssai3d_dask.restoration.cluster import default_workers

        workers = default_workers(settings.method)
    click.echo(format_report(dry_run(job, out, resume), workers, threads_per_worker))
    for line in extra:
        click.echo(line)
    click.echo("dry run: nothing was written")


def _restore(vol, model_dir, out, method, chunks, region, halo, view, dtype, batch, no_skip_empty, scheduler,
             workers, threads_per_worker, memory_limit, overwrite, resume, device="auto", psf_sigma_um=None,
             psf_file=None, rl_iterations=30, shards=None, no_shards=False, ngff_version="0.5", dry_run=False):
    from ssai3d_dask.restoration.cluster import make_client
    from ssai3d_dask.restoration.pipeline import restore as run_restore

    settings = _restore_settings(method, chunks, region, halo, view, dtype, batch, no_skip_empty, device,
                                 psf_sigma_um, psf_file, rl_iterations, shards, no_shards, ngff_version)
    if dry_run:
        _print_dry_run(vol, model_dir, out, settings, resume, workers, threads_per_worker)
        return None
    _check_output(out, overwrite, resume, [vol.source] + ([model_dir] if model_dir else []))
    if workers is None and not scheduler:
        from ssai3d_dask.restoration.cluster import default_workers

        workers = default_workers(method)
    client = make_client(scheduler, workers, threads_per_worker, memory_limit)
    try:
        return run_restore(vol, model_dir, out, settings, overwrite=overwrite, resume=resume, client=client)
    finally:
        client.close()


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="MODEL_DIR from `ssai3d adapt` (--method ssai3d) or `ssai3d train-care` (--method care).")
@click.option("--method", type=click.Choice(["ssai3d", "care", "rl", "interp"]), default="ssai3d",
              show_default=True,
              help="ssai3d: the adapted network; care: a CARE U-Net trained from scratch; rl: Richardson-Lucy "
                   "with a known PSF; interp: linear z interpolation only.")
@click.option("--psf-sigma-um", nargs=3, type=float, default=None, metavar="SZ SY SX",
              help="rl: Gaussian PSF sd per axis in micrometres (the interpolation's z blur is added).")
@click.option("--psf", "psf_file", type=click.Path(path_type=Path), default=None,
              help="rl: a measured 3D PSF (.tif/.npy, z y x) sampled at the output (lateral) voxel size.")
@click.option("--rl-iterations", type=int, default=30, show_default=True, help="rl: Richardson-Lucy iterations.")
@voxel_option
@channels_option
@times_option
@_restore_options
@friendly_errors
def restore(path, out, model_dir, method, voxel_size, channel, time_, **kw):
    """Restore PATH to isotropic voxels into the multiscale OME-Zarr OUT, block by block on a Dask cluster.

    Every method runs through the same block plan (halos, resume, pyramid), so baselines scale like the
    main method.
    """
    from ssai3d_dask.io.dataset import open_dataset

    ds = open_dataset(path, voxel_size, channel, time_)
    done = _restore(ds, model_dir, out, method, **kw)
    if done is not None:
        click.echo(str(done))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="Where to keep the adapted model (default: OUT with .model appended).")
@voxel_option
@channels_option
@times_option
@click.option("--adapt-per-time", is_flag=True,
              help="Adapt every time point on its own (default: one model per channel, reused over time).")
@_adapt_options
@_restore_options
@friendly_errors
def run(path, out, model_dir, voxel_size, channel, time_, adapt_per_time, **kw):
    """Adapt the shipped model to PATH, then restore PATH into OUT: the whole job in one command.

    On a 4D/5D input every channel and time point is restored into one OME-Zarr with the input's axes;
    each channel is adapted on its own (MODEL_DIR/c0, c1, ...).
    """
    from ssai3d_dask.adaptation.adapt import adapt_dataset
    from ssai3d_dask.io.dataset import open_dataset

    ds = open_dataset(path, voxel_size, channel, time_)
    adapt_keys = ("base", "n_patches", "patch_px", "iterations", "batch_size", "lr", "layers_fraction", "selection",
                  "denoise", "sigmas", "angles", "seed", "device")
    settings = _adapt_settings(**{k: kw.pop(k) for k in adapt_keys if k != "device"}, device=kw.get("device", "auto"))
    restore_settings = _restore_settings("ssai3d", **kw)  # bad sizes fail now, not after adaptation
    if kw["dry_run"]:
        _dry_run_run(ds, out, settings, restore_settings, kw)
        return
    model_dir = model_dir or Path(str(out).rstrip("/") + ".model")
    _check_output(out, kw["overwrite"], kw["resume"], [ds.source])
    _check_output(model_dir, True, True, [ds.source])
    if not (kw["resume"] and any(Path(model_dir).glob("**/model.pt"))):
        adapt_dataset(ds, model_dir, settings, per_time=adapt_per_time, overwrite=True)
    click.echo(str(_restore(ds, model_dir, out, "ssai3d", **kw)))


def _dry_run_run(ds, out, adapt_settings, restore_settings, kw) -> None:
    """`run --dry-run`: the restore plan, timed with the base model standing in for the adapted one (same
    architecture, so the same cost), plus a measured fine-tuning step."""
    import time

    import torch

    from ssai3d_dask.models.folder import AdaptedModel
    from ssai3d_dask.models.checkpoint import load_model
    from ssai3d_dask.ops.denoise import Denoiser
    from ssai3d_dask.geometry import isotropic_geometry
    from ssai3d_dask.adaptation.sampling import volume_statistics

    vol = ds.first
    adapt_settings.validate(vol)
    model, _ = load_model(adapt_settings.base)
    model.set_pool_window(model.local_window())
    denoiser = Denoiser(0.05, 0.05, "on") if adapt_settings.denoise == "on" else Denoiser()
    stand_in = AdaptedModel(model, volume_statistics(vol, adapt_settings.seed), denoiser,
                            isotropic_geometry(vol.shape, vol.voxel_size_um).z_factor, {})
    ft = adapt_settings.finetune
    x = torch.rand(ft.batch_size, 1, adapt_settings.patch_px, adapt_settings.patch_px)
    opt = torch.optim.Adam(model.parameters(), lr=1e-9)
    from ssai3d_dask.models.nafnet import gray_forward

    steps = []
    for _ in range(3):
        t0 = time.perf_counter()
        opt.zero_grad()
        gray_forward(model.train(), x).abs().mean().backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
    model.eval()
    step = min(steps[1:])
    note = (f"adaptation   {ft.iterations} fine-tuning steps x {step:.2f} s (measured, batch {ft.batch_size}, "
            f"{adapt_settings.patch_px} px) = ~{ft.iterations * step / 60:.0f} min, plus sampling, denoiser "
            f"calibration and zero-shot metrics; restore times above use the base model as a stand-in"
            + ("; with --denoise auto the denoiser (if chosen) adds its cost" if adapt_settings.denoise == "auto" else ""))
    _print_dry_run(ds, None, out, restore_settings, kw["resume"], kw["workers"], kw["threads_per_worker"],
                   adapted=stand_in, extra=[note])


@main.command("train-care")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="MODEL_DIR to write.")
@click.option("--psf-sigma-um", nargs=3, type=float, required=True, metavar="SZ SY SX",
              help="The known optical PSF: Gaussian sd per axis in micrometres.")
@voxel_option
@channel_option
@time_option
@click.option("--patches", "n_patches", type=int, default=256, show_default=True)
@click.option("--patch", "patch_px", type=int, default=64, show_default=True, help="Patch size (multiple of 16).")
@click.option("--iterations", type=int, default=1000, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=4e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing MODEL_DIR.")
@friendly_errors
def train_care(path, out_dir, psf_sigma_um, voxel_size, channel, time_, n_patches, patch_px, iterations, batch_size,
               lr, seed, device, overwrite):
    """Train the CARE baseline from scratch on PATH's lateral planes with one known PSF; write MODEL_DIR.

    Restore with `ssai3d restore PATH OUT --method care --model MODEL_DIR`.
    """
    from ssai3d_dask.adaptation.care import CareSettings, train_care as run_train
    from ssai3d_dask.restoration.cluster import gpu_count
    from ssai3d_dask.io.volume import open_volume

    vol = open_volume(path, voxel_size, channel, time_)
    dev = ("cuda" if gpu_count() else "cpu") if device == "auto" else device
    settings = CareSettings(psf_sigma_um=tuple(psf_sigma_um), n_patches=n_patches, patch_px=patch_px,
                            iterations=iterations, batch_size=batch_size, lr=lr, seed=seed, device=dev)
    run_train(vol, out_dir, settings, overwrite=overwrite)
    click.echo(str(out_dir))


@main.command("train-surgeon")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--stack", "stacks", multiple=True, metavar="PATH[:DZ,DY,DX]",
              help="A real stack for the meta-dataset, with its voxel size in um when the file has none (repeat).")
@click.option("--phantoms", default="strands,tubes,beads,cylinders", show_default=True,
              help="Phantom kinds added to the meta-dataset (comma list; empty for none).")
@click.option("--base", default="base", show_default=True, help="Base model the surgeon is trained for.")
@click.option("--k-steps", type=int, default=8, show_default=True,
              help="Fine-tuning steps per layer when measuring its benefit.")
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def train_surgeon(out, stacks, phantoms, base, k_steps, seed):
    """Train the surgeon for a base model from a meta-dataset of stacks; write OUT (.pt) and OUT.json."""
    from ssai3d_dask.adaptation.surgeon_train import phantom_volume, train_and_save
    from ssai3d_dask.io.volume import open_volume

    vols = [(f"phantom-{k}", phantom_volume(k, seed)) for k in phantoms.split(",") if k]
    for spec in stacks:
        path, _, vox = spec.partition(":")
        vs = tuple(float(v) for v in vox.split(",")) if vox else None
        vols.append((Path(path).name, open_volume(path, vs)))
    if not vols:
        raise Ssai3dError("no stacks: give --stack PATH and/or --phantoms")
    cmd = "ssai3d train-surgeon " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
    m = train_and_save(out, vols, base, k_steps, seed, cmd)
    for name, ev in m["leave_one_stack_out"].items():
        click.echo(f"{name}: spearman surgeon {ev['spearman_surgeon']:+.2f} snip {ev['spearman_snip']:+.2f}; "
                   f"top-10% gain surgeon {ev['top10pct_gain_surgeon_db']:.3f} dB, "
                   f"snip {ev['top10pct_gain_snip_db']:.3f}, oracle {ev['top10pct_gain_oracle_db']:.3f}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True)
@click.option("--shape", nargs=3, type=int, default=(64, 192, 192), show_default=True, metavar="Z Y X",
              help="Ground-truth shape; the raw stack has Z / 4 planes.")
@click.option("--iterations", type=int, default=150, show_default=True, help="Fine-tuning steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=None, help="LocalCluster workers.")
@friendly_errors
def demo(out_dir, shape, iterations, seed, workers):
    """Simulate strands and beads at anisotropy 4 with noise, adapt the shipped model, restore, score, report."""
    from ssai3d_dask.evaluation.demo import run_demo

    run_demo(out_dir, tuple(shape), iterations, seed, workers)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
