"""Commands that write restored volumes: ``restore`` (any method) and ``run`` (adapt, then restore)."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import click

from ssai3d_dask.cli.app import cli_progress, friendly_errors, main
from ssai3d_dask.cli.options import (Opt, channels_option, former, collect, config_option, config_sections, print_config,
                                     print_config_option, settings_options, stack, times_option, voxel_option)
from ssai3d_dask.cli.train import ADAPT_OPTS, adapt_options
from ssai3d_dask.errors import SettingsError
from ssai3d_dask.settings import DEFAULT_METHOD, METHODS, AdaptSettings, ClusterSettings, RestoreSettings, RLMethod
from ssai3d_dask.settings.restoration import check_method_parameters

RESTORE_OPTS = [Opt("chunks"), Opt("region"), Opt("region_memory", metavar="SIZE"), Opt("halo"), Opt("view"), Opt("dtype"), Opt("batch"),
                Opt("skip_empty"), Opt("skip_background"), Opt("shards"), Opt("sharding"), Opt("ngff_version"), Opt("compile"),
                Opt("device"), Opt("precision")]
RL_OPTS = [Opt("psf_sigma_um", metavar="SZ SY SX"), Opt("psf_file", metavar="FILE"), Opt("iterations")]

CLUSTER_OPTS = [Opt("cluster", metavar="local|slurm|pbs|lsf|ADDRESS"), Opt("jobs"), Opt("adaptive"), Opt("workers"),
                Opt("threads_per_worker"), Opt("memory_limit", metavar="SIZE")]

_run_options = stack(
    click.option("--dry-run", is_flag=True,
                 help="Print the plan (regions, pruning, files, bytes, memory and time measured on one calibration "
                      "piece) and exit without writing anything."),
    settings_options(ClusterSettings, CLUSTER_OPTS),
    former("--scheduler", "opt__cluster", "--cluster"),
    click.option("--overwrite", is_flag=True, help="Replace an existing output."),
    click.option("--resume", is_flag=True, help="Finish an interrupted output: only missing regions are computed."),
    config_option, print_config_option,
)
restore_options = stack(settings_options(RestoreSettings, RESTORE_OPTS), _run_options)
# In `run`, --device and --precision come with the adaptation options and apply to both stages.
run_restore_options = stack(settings_options(RestoreSettings, [o for o in RESTORE_OPTS
                                                               if o.field not in ("device", "precision")]),
                            _run_options)


_in_out = stack(click.argument("path", type=click.Path(path_type=Path)),
                click.argument("out", type=click.Path(path_type=Path)))


def restore_settings(kw: dict, section: dict | None) -> RestoreSettings:
    """RestoreSettings from the file's section and the options; the method and its rl parameters merged."""
    section = copy.deepcopy(section or {})
    current = section.pop("method", None)
    current = {"name": current} if isinstance(current, str) else (current or {})
    method = kw.pop("method", None)
    if method and method != current.get("name"):
        current = {"name": method}
    rl = {o.field: v for o in RL_OPTS if (v := kw.pop(o.dest, None)) is not None}
    if rl:
        try:
            check_method_parameters(current.get("name", DEFAULT_METHOD), rl)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    if "psf_file" in rl:
        rl["psf_file"] = str(rl["psf_file"])
    return collect(RestoreSettings, RESTORE_OPTS, kw, section, {"method": {**current, **rl}} if current else None)


def cluster_settings(kw: dict, section: dict | None) -> ClusterSettings:
    """ClusterSettings from the file's ``cluster`` section and the options."""
    return collect(ClusterSettings, CLUSTER_OPTS, kw, section)


@contextmanager
def _client(cluster: ClusterSettings, method: str, device: str = "cpu"):
    from ssai3d_dask.restoration.cluster import close_client, connect

    client = connect(cluster, method, device)
    try:
        yield client
    finally:
        close_client(client)


def _print_dry_run(ds, model_dir, out, settings, resume, cluster: ClusterSettings, adapted=None, extra=()):
    from ssai3d_dask.restoration.cluster import default_workers
    from ssai3d_dask.restoration.dryrun import dry_run, format_report
    from ssai3d_dask.restoration.pipeline import prepare_restore, slice_models

    _, t, c, vol = next(ds.slices())
    if adapted is None:
        model_dir = slice_models(ds, model_dir, settings.method.name)[(t, c)]
    n = len(ds.volumes)
    if n > 1:
        extra = [f"dataset      {n} slices ({ds.axes}: {ds.lead_shape}); the figures above are for the first, "
                 f"the whole run costs about {n} times them", *extra]
    job = prepare_restore(vol, model_dir, settings, adapted=adapted)
    click.echo(format_report(dry_run(job, out, resume), cluster.workers or default_workers(settings.method.name),
                             cluster.threads_per_worker or 1))
    for line in extra:
        click.echo(line)
    click.echo("dry run: nothing was written")


@main.command()
@_in_out
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="MODEL_DIR from `ssai3d adapt` (--method ssai3d), `ssai3d train-care` (--method care) or "
                   "`ssai3d train-cyclegan` (--method cyclegan).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="ssai3d: the adapted network; care: a CARE U-Net trained from scratch; cyclegan: an "
                   "OT-CycleGAN generator (3D, on overlapping sub-volumes); rl: Richardson-Lucy "
                   "with a known PSF; interp: linear z interpolation only. [default: ssai3d]")
@settings_options(RLMethod, RL_OPTS)
@stack(voxel_option, channels_option, times_option)
@restore_options
@friendly_errors
def restore(path, out, model_dir, voxel_size, channel, time_, dry_run, overwrite, resume, config_file, print_cfg,
            **kw):
    """Restore PATH to isotropic voxels into the multiscale OME-Zarr OUT, block by block on a Dask cluster.

    Every method runs through the same block plan (halos, resume, pyramid), so baselines scale like the
    main method.
    """
    from ssai3d_dask.io.dataset import open_dataset
    from ssai3d_dask.io.omezarr import check_output
    from ssai3d_dask.restoration.pipeline import restore as run_restore

    sections = config_sections(config_file)
    cluster = cluster_settings(kw, sections.get("cluster"))
    settings = restore_settings(kw, sections.get("restore"))
    if print_cfg:
        return print_config({"restore": settings, "cluster": cluster})
    ds = open_dataset(path, voxel_size, channel, time_)
    if dry_run:
        return _print_dry_run(ds, model_dir, out, settings, resume, cluster)
    check_output(out, overwrite, resume, [ds.source] + ([model_dir] if model_dir else []))
    with _client(cluster, settings.method.name, settings.resolved_device()) as client:
        click.echo(str(run_restore(ds, model_dir, out, settings, overwrite=overwrite, resume=resume, client=client,
                                   progress=cli_progress())))


@main.command()
@_in_out
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="MODEL_DIR: where the adapted model goes (default: OUT with .model appended).")
@former("--model-dir", "model_dir", "--model", type=click.Path(path_type=Path))
@stack(voxel_option, channels_option, times_option)
@click.option("--adapt-per-time", is_flag=True,
              help="Adapt every time point on its own (default: one model per channel, reused over time).")
@adapt_options
@run_restore_options
@friendly_errors
def run(path, out, model_dir, voxel_size, channel, time_, adapt_per_time, dry_run, overwrite, resume, config_file,
        print_cfg, **kw):
    """Adapt the shipped model to PATH, then restore PATH into OUT: the whole job in one command.

    On a 4D/5D input every channel and time point is restored into one OME-Zarr with the input's axes;
    each channel is adapted on its own (MODEL_DIR/c0, c1, ...). --device and --precision apply to both
    stages.
    """
    from ssai3d_dask.io.dataset import open_dataset
    from ssai3d_dask.io.omezarr import check_output
    from ssai3d_dask.adaptation.estimate import adaptation_stand_in
    from ssai3d_dask.workflow import run as run_all

    sections = config_sections(config_file)
    shared = {"opt__device": kw.get("opt__finetune__device"), "opt__precision": kw.get("opt__finetune__precision")}
    adapt = collect(AdaptSettings, ADAPT_OPTS, kw, sections.get("adapt"))
    kw.update({k: v for k, v in shared.items() if v is not None})
    settings = restore_settings(kw, sections.get("restore"))  # bad sizes fail now, not after adapting
    cluster = cluster_settings(kw, sections.get("cluster"))
    if settings.method.name != DEFAULT_METHOD:
        raise SettingsError(f"run adapts an SSAI-3D model; the settings ask for method {settings.method.name}: use "
                            f"`ssai3d restore` for it")
    if print_cfg:
        return print_config({"adapt": adapt, "restore": settings, "cluster": cluster})
    ds = open_dataset(path, voxel_size, channel, time_)
    check_output(out, overwrite, resume, [ds.source])  # before a cluster starts
    if dry_run:
        stand_in, note = adaptation_stand_in(ds, adapt)
        return _print_dry_run(ds, None, out, settings, resume, cluster, adapted=stand_in, extra=[note])
    with _client(cluster, DEFAULT_METHOD, settings.resolved_device()) as client:
        click.echo(str(run_all(ds, out, model_dir, adapt, settings, adapt_per_time=adapt_per_time,
                               overwrite=overwrite, resume=resume, client=client, progress=cli_progress())))
