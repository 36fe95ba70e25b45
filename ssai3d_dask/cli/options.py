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


def settings_options(model: type[Settings], opts: list[Opt]):
    """A decorator adding one click option per field in ``opts``."""

    def decorate(fn):
        for o in reversed(opts):
            info, owner = _field_info(model, o.field)
            name = o.flag or flag_of(owner, o.field.split(".")[-1])
            help_ = (info.description or "") + _default_text(info)
            if _strip_optional(info.annotation) is bool:
                # a switch pair: the field's flag names the "off" side when it starts with --no-
                on = "--" + o.field.split(".")[-1].replace("_", "-")
                off = name if name.startswith("--no-") else "--no-" + name[2:]
                on_default = "on" if info.default else "off"
                fn = click.option(f"{on}/{off}", o.dest, default=None, help=f"{help_} [default: {on_default}]")(fn)
            else:
                kwargs = _click_kwargs(info) | ({"metavar": o.metavar} if o.metavar else {})
                fn = click.option(name, o.dest, default=None, **kwargs, help=help_)(fn)
        return fn

    return decorate


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


def stack(*decorators):
    """Apply several option decorators in reading order."""

    def decorate(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return decorate
