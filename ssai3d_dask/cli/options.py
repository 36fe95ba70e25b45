"""Command-line options derived from the settings models, and the options every command shares.

A settings field becomes an option whose type, choices, help and shown default come from the model
(:mod:`ssai3d_dask.settings`); the CLI does not restate them. Options left out keep the value of the
settings file (``--config``) or, without one, the model's default: command line > file > model.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel

from ssai3d_dask.settings import Settings, dump_config, flag_of, read_config


class CommaList(click.ParamType):
    """``3,4,5`` -> (3.0, 4.0, 5.0)."""

    name = "LIST"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


@dataclass(frozen=True)
class Opt:
    """One settings field on the command line: ``field`` is a dotted path into the model."""

    field: str
    flag: str | None = None  # default: --field-name
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return "opt__" + self.field.replace(".", "__")


def _field_info(model: type[BaseModel], dotted: str):
    """(the field, the model that holds it) for a dotted path."""
    parts = dotted.split(".")
    for p in parts[:-1]:
        model = model.model_fields[p].annotation  # a nested settings model
    return model.model_fields[parts[-1]], model


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _click_kwargs(info) -> dict:
    tp = _strip_optional(info.annotation)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return {"type": click.Choice([str(a) for a in args])}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": CommaList()}
    if origin is tuple:
        names = {3: "Z Y X"}
        return {"type": args[0], "nargs": len(args), "metavar": names.get(len(args))}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"no command-line form for {info.annotation}")


def _default_text(info) -> str:
    d = info.get_default(call_default_factory=True)
    if d is None:
        return ""
    if isinstance(d, bool):
        return ""
    if isinstance(d, tuple):
        return " [default: " + (",".join(f"{v:g}" for v in d) if all(isinstance(v, float) for v in d)
                                else " ".join(map(str, d))) + "]"
    return f" [default: {d}]"


def settings_options(model: type[Settings], opts: list[Opt], section: str | None = None):
    """A decorator adding one click option per field in ``opts``, spelled as the field (``--patch-px`` for
    ``patch_px``; a nested field by its last part), under the help ``section`` (default: by its flag,
    :data:`SECTIONS`). A field's former spelling (``former_flag``) keeps working, with a warning."""

    def decorate(fn):
        for o in reversed(opts):
            info, owner = _field_info(model, o.field)
            leaf = o.field.split(".")[-1]
            name = o.flag or flag_of(owner, leaf)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            help_ = (info.description or "") + _default_text(info)
            if _strip_optional(info.annotation) is bool:
                on_default = "on" if info.default else "off"
                fn = click.option(f"{name}/--no-{name[2:]}", o.dest, default=None,
                                  help=f"{help_} [default: {on_default}]")(fn)
                if "former_flag" in extra:  # a former --no-... spelling
                    fn = former(extra["former_flag"], o.dest, f"--no-{name[2:]}", is_flag=True, flag_value=False)(fn)
            else:
                kwargs = _click_kwargs(info) | ({"metavar": o.metavar} if o.metavar else {})
                fn = click.option(name, o.dest, default=None, **kwargs, help=help_)(fn)
                if "former_flag" in extra:
                    fn = former(extra["former_flag"], o.dest, name, **kwargs)(fn)
            fn.__click_params__[-1 if "former_flag" not in extra else -2].section = section
        return fn

    return decorate


# --- one grammar for every command: former spellings, help in sections ------------------------------

#: Help sections, in order, and the options that go in each (by their first flag); others: "Options".
SECTIONS = {
    "Input": ("--voxel-size", "--channel", "--time", "--level"),
    "Output": ("--overwrite", "--resume", "--dtype", "--chunks", "--shards", "--sharding", "--ngff-version",
               "--json"),
    "Method": ("--model", "--method", "--psf-sigma-um", "--psf-file", "--rl-iterations", "--halo", "--view",
               "--skip-empty", "--skip-background", "--empty-level"),
    "Compute": ("--region", "--region-memory", "--batch", "--device", "--precision", "--compile", "--dry-run",
                "--in-flight"),
    "Cluster": ("--scheduler", "--cluster", "--jobs", "--workers", "--threads-per-worker", "--memory-limit"),
    "Settings file": ("--config", "--print-config"),
}
_SECTION_OF = {flag: name for name, flags in SECTIONS.items() for flag in flags}


def former(old: str, dest: str, new: str, **kwargs):
    """The former spelling ``old`` of the option or argument ``dest`` (now ``new``): hidden from the help,
    it still works for one release, with a warning on stderr (:class:`Command` moves its value to ``dest``)."""

    def decorate(fn):
        fn = click.option(old, f"former__{dest}__{old.strip('-').replace('-', '_')}", hidden=True, default=None,
                          **kwargs)(fn)
        fn.__click_params__[-1].replaces = (dest, new)
        return fn

    return decorate


class Command(click.Command):
    """Every subcommand: former spellings moved to their new names (with a warning), a positional argument
    marked ``needed`` required once they are, and the help grouped into :data:`SECTIONS`."""

    def invoke(self, ctx: click.Context):
        for p in self.params:
            if not hasattr(p, "replaces"):
                continue
            value = ctx.params.pop(p.name, None)
            if value is None:
                continue
            dest, new = p.replaces
            old = p.opts[0]
            if ctx.params.get(dest) not in (None, ()):
                raise click.UsageError(f"{old} is the former spelling of {new}: give one of them", ctx)
            click.echo(f"Warning: {old} is deprecated and goes in the next release; use {new}", err=True)
            ctx.params[dest] = value
        for p in self.params:
            if getattr(p, "needed", False) and ctx.params.get(p.name) is None:
                raise click.MissingParameter(ctx=ctx, param=p)
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list] = {}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None:
                name = getattr(p, "section", None) or _SECTION_OF.get(p.opts[0].split("/")[0], "Options")
                groups.setdefault(name, []).append(record)
        for name in [*SECTIONS, *(g for g in groups if g not in SECTIONS)]:
            if name in groups:
                with formatter.section(name):
                    formatter.write_dl(groups[name])


def positional(name: str, old: str | None = None, required: bool = True, **kwargs):
    """A positional argument (``IN``, ``OUT``, ``MODEL_DIR``) that used to be the option ``old``: both work for
    one release; one of them is required."""

    def decorate(fn):
        if old:
            fn = former(old, name, kwargs.get("metavar") or name.upper(), type=kwargs.get("type"))(fn)
        fn = click.argument(name, required=not old and required, **kwargs)(fn)
        fn.__click_params__[-1].needed = required
        return fn

    return decorate


def one_index(flag: str):
    """Parse ``--channel``/``--time`` for a command that works on one of them: the selection syntax of
    ``restore`` and ``run`` (:func:`~ssai3d_dask.io.dataset.parse_selection`), which must name one."""

    def convert(ctx, param, value):
        if value is None or isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise click.BadParameter(f"{value!r}: this command works on one {flag[2:]}; give its index (restore, "
                                     f"run and adapt take lists, ranges and all)", ctx, param) from None

    return convert


def _set(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def collect(model: type[Settings], opts: list[Opt], kw: dict, section: dict | None = None,
            extra: dict | None = None) -> Settings:
    """The settings: the file's ``section``, then ``extra``, then the options given on the command line."""
    import copy

    data = copy.deepcopy(section or {})
    for k, v in (extra or {}).items():
        _set(data, k, v)
    for o in opts:
        v = kw.pop(o.dest, None)
        if v is not None:
            _set(data, o.field, v)
    return model(**data)


config_option = click.option(
    "--config", "config_file", type=click.Path(path_type=Path), default=None,
    help="Settings file (YAML, or TOML by its .toml suffix) with sections adapt/restore/care/cyclegan/pretrain; options "
         "given on the command line win. Write one with --print-config.")
print_config_option = click.option(
    "--print-config", "print_cfg", is_flag=True, help="Print the effective settings as a settings file and exit (nothing is run).")


def config_sections(config_file: Path | None) -> dict[str, dict]:
    return read_config(config_file) if config_file else {}


def print_config(sections: dict[str, Settings]) -> None:
    click.echo(dump_config(sections), nl=False)


voxel_option = click.option(
    "--voxel-size", nargs=3, type=float, default=None, metavar="DZ DY DX",
    help="Voxel size in micrometres (z, y, x). Overrides the file's metadata; required when the file has none.")
channel_option = click.option("--channel", default=None, metavar="SEL", callback=one_index("--channel"),
                              help="The channel of multi-channel data, by its index (one here).")
time_option = click.option("--time", "time_", default=None, metavar="SEL", callback=one_index("--time"),
                           help="The time point of a time series, by its index (one here).")
channels_option = click.option(
    "--channel", default=None, metavar="SEL",
    help="Channels to process: an index, a list (0,2), a range (1-3) or all (default: all). With several, the "
         "output keeps the channel axis and each channel gets its own model (MODEL_DIR/c0, c1, ...).")
times_option = click.option(
    "--time", "time_", default=None, metavar="SEL",
    help="Time points to process, like --channel (default: all); several keep the time axis in the output.")
json_option = click.option(
    "--json", "json_to", is_flag=False, flag_value="-", default=None, metavar="[PATH]",
    help="The result as JSON: printed (--json alone) instead of the text, or written to PATH.")


def emit_json(data, to: str | Path | None) -> bool:
    """Write ``data`` as JSON where ``--json`` says (``-``: stdout); whether it was printed instead of the text."""
    import json

    if to is None:
        return False
    if str(to) == "-":
        click.echo(json.dumps(data, indent=2, default=str))
        return True
    from ssai3d_dask.io.files import write_json

    write_json(Path(to), data)
    return False


level_option = click.option("--level", type=int, default=0, show_default=True,
                            help="OME-Zarr pyramid level to read (0 = full resolution).")


def stack(*decorators):
    """Apply several option decorators in reading order."""

    def decorate(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return decorate
