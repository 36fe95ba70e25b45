"""Commands that train networks: ``adapt`` (SSAI-3D), ``train-care``, ``train-cyclegan``, ``pretrain`` and
``train-surgeon``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ssai3d_dask.cli.app import cli_progress, friendly_errors, main
from ssai3d_dask.cli.options import (Opt, channel_option, channels_option, collect, config_option, config_sections,
                                     positional, print_config, print_config_option, settings_options, stack,
                                     time_option,
                                     times_option, voxel_option)
from ssai3d_dask.errors import Ssai3dError
from ssai3d_dask.settings import AdaptSettings, CareSettings, CycleGANSettings, PretrainSettings

ADAPT_OPTS = [Opt("base"), Opt("n_patches"), Opt("patch_px"),
              Opt("finetune.iterations", "--iterations"), Opt("finetune.patience", "--patience"),
              Opt("finetune.min_gain_db", "--min-gain-db"), Opt("finetune.cooldown", "--cooldown"),
              Opt("finetune.max_minutes", "--max-minutes"), Opt("finetune.eval_every", "--eval-every"),
              Opt("finetune.batch_size", "--batch-size"), Opt("finetune.crop_px", "--crop-px"),
              Opt("finetune.ema", "--ema"),
              Opt("finetune.lr", "--lr"), Opt("finetune.optimizer", "--optimizer"), Opt("layers_fraction"),
              Opt("finetune.checkpoint_every", "--checkpoint-every"),
              Opt("selection"), Opt("denoise"), Opt("input_noise"), Opt("psf_bank"), Opt("sigmas_px"),
              Opt("psf_lean"), Opt("angles_deg"),
              Opt("seed"), Opt("finetune.device", "--device"), Opt("finetune.precision", "--precision")]
CARE_OPTS = [Opt("psf_sigma_um", metavar="SZ SY SX"), Opt("n_patches"), Opt("patch_px"), Opt("iterations"),
             Opt("batch_size"), Opt("lr"), Opt("base"), Opt("depth"), Opt("seed"),
             Opt("device"), Opt("precision")]
CYCLEGAN_OPTS = [Opt("preset"), Opt("volume_px"), Opt("n_volumes"), Opt("iterations"), Opt("batch_size"),
                 Opt("slices"), Opt("mip"), Opt("lr"), Opt("cycle_weight"), Opt("seed"), Opt("device"),
                 Opt("precision"), Opt("checkpoint_every")]
PRETRAIN_OPTS = [Opt("preset"), Opt("iterations"), Opt("batch_size"), Opt("patch_px"), Opt("lr"),
                 Opt("max_axial_sd"), Opt("seed"), Opt("device"), Opt("precision"), Opt("init"), Opt("note")]
adapt_options = settings_options(AdaptSettings, ADAPT_OPTS)


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@settings_options(PretrainSettings, PRETRAIN_OPTS)
@stack(config_option, print_config_option)
@friendly_errors
def pretrain(out, config_file, print_cfg, **kw):
    """Pretrain a base deblurring model offline (no downloads) and write it to OUT (.pt).

    Beside it goes OUT with suffix .json: the manifest (settings, held-out PSNR curve, lineage of --init
    runs) and the weights' sha256, the sidecar shipped with weights in ssai3d_dask/weights. Rerunning with
    the same OUT resumes from OUT.resume.pt.
    """
    from ssai3d_dask.adaptation.pretrain import pretrain as run

    settings = collect(PretrainSettings, PRETRAIN_OPTS, kw, config_sections(config_file).get("pretrain"))
    if print_cfg:
        return print_config({"pretrain": settings})
    click.echo(str(run(out, settings, progress=cli_progress())))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@positional("out_dir", old="--out", metavar="MODEL_DIR", type=click.Path(path_type=Path))
@stack(voxel_option, channels_option, times_option)
@adapt_options
@click.option("--adapt-per-time", is_flag=True, help="One adaptation per time point too (MODEL_DIR/t3/c0).")
@click.option("--overwrite", is_flag=True, help="Replace an existing MODEL_DIR.")
@stack(config_option, print_config_option)
@friendly_errors
def adapt(path, out_dir, voxel_size, channel, time_, adapt_per_time, overwrite, config_file, print_cfg, **kw):
    """Adapt the base model to the stack PATH from its own lateral planes; write MODEL_DIR.

    MODEL_DIR holds model.pt, manifest.json (layers chosen with all 14 metrics, normalisation, PSF bank,
    settings, timings) and validation.png; for several channels, one such folder per channel (c0, c1, ...).
    """
    from ssai3d_dask.adaptation.adapt import adapt_dataset
    from ssai3d_dask.io.dataset import open_dataset

    settings = collect(AdaptSettings, ADAPT_OPTS, kw, config_sections(config_file).get("adapt"))
    if print_cfg:
        return print_config({"adapt": settings})
    ds = open_dataset(path, voxel_size, channel, time_)
    adapt_dataset(ds, out_dir, settings, per_time=adapt_per_time, overwrite=overwrite, progress=cli_progress())
    click.echo(str(out_dir))


def _baseline_command(name: str, section: str, settings_cls, opts, overwrite_help: str):
    """A command that trains a baseline from scratch on PATH into MODEL_DIR (train-care, train-cyclegan):
    the decorated function documents it and returns the training function (imported when the command runs)."""

    def decorate(trainer):
        @main.command(name, help=trainer.__doc__)
        @click.argument("path", type=click.Path(path_type=Path))
        @positional("out_dir", old="--out", metavar="MODEL_DIR", type=click.Path(path_type=Path))
        @stack(voxel_option, channel_option, time_option)
        @settings_options(settings_cls, opts)
        @click.option("--overwrite", is_flag=True, help=overwrite_help)
        @stack(config_option, print_config_option)
        @friendly_errors
        def command(path, out_dir, voxel_size, channel, time_, overwrite, config_file, print_cfg, **kw):
            from ssai3d_dask.io.volume import open_volume

            settings = collect(settings_cls, opts, kw, config_sections(config_file).get(section))
            if print_cfg:
                return print_config({section: settings})
            vol = open_volume(path, voxel_size, channel, time_)
            trainer()(vol, out_dir, settings, overwrite=overwrite, progress=cli_progress())
            click.echo(str(out_dir))

        return command

    return decorate


@_baseline_command("train-care", "care", CareSettings, CARE_OPTS, "Replace an existing MODEL_DIR.")
def train_care():
    """Train the CARE baseline from scratch on PATH's lateral planes with one known PSF; write MODEL_DIR.

    Restore with `ssai3d restore PATH OUT --method care --model MODEL_DIR`.
    """
    from ssai3d_dask.adaptation.care import train_care as run_train

    return run_train


@_baseline_command("train-cyclegan", "cyclegan", CycleGANSettings, CYCLEGAN_OPTS,
                   "Replace an existing MODEL_DIR (and any unfinished training in it).")
def train_cyclegan():
    """Train the OT-CycleGAN baseline (Park et al. 2022) on PATH alone (no PSF, no truth); write MODEL_DIR.

    Two 3D generators (G: anisotropic -> isotropic, F: back) and two 2D discriminators (axial slices of G's
    output against lateral slices of PATH; axial slices of F's output against PATH's own) learn from random
    sub-volumes of PATH, z interpolated to the lateral grid. A resume checkpoint is written every
    --checkpoint-every steps: rerun the same command to continue an interrupted training. MODEL_DIR keeps G.

    Restore with `ssai3d restore PATH OUT --method cyclegan --model MODEL_DIR`.
    """
    from ssai3d_dask.adaptation.cyclegan import train_cyclegan as run_train

    return run_train


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
    from ssai3d_dask.adaptation.surgeon_train import train_and_save
    from ssai3d_dask.evaluation.simulate import phantom_volume
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
