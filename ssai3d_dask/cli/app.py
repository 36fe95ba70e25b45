"""The ``ssai3d`` command group, logging setup and the error policy shared by every subcommand.

Only the CLI configures logging and progress display. A user-facing failure is an
:class:`~ssai3d_dask.errors.Ssai3dError`: one line on stderr, exit status 2, nothing half-written. Anything
else is a bug: the traceback is printed with a request to report it (exit status 1).
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import traceback

import click

from ssai3d_dask.progress import Progress, TqdmProgress
from ssai3d_dask.errors import Interrupted, Ssai3dError

logger = logging.getLogger("ssai3d_dask")

def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ssai3d_dask").setLevel(level)
    for noisy in ("distributed", "numcodecs", "PIL", "matplotlib", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    # tifffile warns about the file structure (a missing page, odd metadata) before our own reader either
    # copes or stops with an error naming the fix; its words add noise there, so -v shows them
    logging.getLogger("tifffile").setLevel(logging.ERROR if verbose < 1 else logging.WARNING)


def cli_progress() -> Progress:
    """What the commands pass to the library as ``progress``: tqdm bars on stderr, none with ``-q``."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx is not None and ctx.find_root().params.get("quiet"))
    return Progress() if quiet else TqdmProgress()


class UserError(click.ClickException):
    exit_code = 2


def friendly_errors(fn):
    """Our errors become one line and exit status 2; anything else is reported as a bug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:  # stopped by the batch scheduler: say how to resume, exit as SIGTERM does
            click.echo(f"Error: {exc}", err=True)
            sys.exit(128 + signal.SIGTERM)
        except Ssai3dError as exc:
            raise UserError(str(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except BrokenPipeError:  # the reader of our output went away (`ssai3d info X | head`): not a bug
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(128 + signal.SIGPIPE)
        except Exception:  # a bug: show everything needed to fix it
            click.echo(traceback.format_exc(), err=True)
            click.echo("This is a bug in ssai3d-dask, not a problem with your input. Please report it on the "
                       "project's issue tracker with the command line and the traceback above.", err=True)
            sys.exit(1)

    return wrapper


click.ClickException.exit_code = 2  # click's own usage errors: also exit status 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="ssai3d-dask")
def main(verbose: int, quiet: bool) -> None:
    """ssai3d: isotropic 3D resolution from a single anisotropic stack (SSAI-3D), out of core on Dask.

    Typical use: `ssai3d info STACK` to check voxel sizes, `ssai3d run STACK OUT.ome.zarr` to adapt the
    shipped model to the stack and restore it, `ssai3d demo` for a self-contained example. Settings can come
    from a file: `--print-config > s.yaml`, edit, then `--config s.yaml`.
    """
    _setup_logging(verbose, quiet)


from ssai3d_dask.cli.options import Command  # noqa: E402  (every subcommand: one grammar, help in sections)

main.command_class = Command
