"""Restoration methods as plug-ins: one module per method, found through :data:`REGISTRY`.

Adding a method: a module here with a :class:`~.base.RestorationMethod` subclass, one line in
:data:`REGISTRY`, its settings model in :mod:`ssai3d_dask.settings.restoration` (its name in the ``method``
union; a network method joins :class:`~ssai3d_dask.settings.NetworkMethod`'s names) and its tests:
``tests/test_methods.py`` runs the contract (a constant crop, block invariance) on every registered method.
"""

from __future__ import annotations

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.restoration.methods.base import Resources, RestorationMethod
from ssai3d_dask.restoration.methods.care import CARE
from ssai3d_dask.restoration.methods.cyclegan import CycleGAN
from ssai3d_dask.restoration.methods.interp import Interp
from ssai3d_dask.restoration.methods.rl import RichardsonLucy
from ssai3d_dask.restoration.methods.ssai3d import SSAI3D
from ssai3d_dask.settings import DEFAULT_METHOD

#: Every method, by its ``--method`` name.
REGISTRY: dict[str, RestorationMethod] = {m.name: m for m in (SSAI3D(), CARE(), CycleGAN(), RichardsonLucy(),
                                                                Interp())}


def get_method(name: str) -> RestorationMethod:
    """The registered method called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SettingsError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}") from None


def method_for_kind(kind: str) -> RestorationMethod:
    """The method that restores with a model folder of ``kind``."""
    return next(m for m in REGISTRY.values() if m.folder_kind == kind)


__all__ = ["DEFAULT_METHOD", "REGISTRY", "Resources", "RestorationMethod", "get_method", "method_for_kind"]
