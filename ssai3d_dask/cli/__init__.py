"""The ``ssai3d`` command: a thin layer over the library; subcommands mirror the pipeline stages.

:mod:`.app` holds the group and the error policy, :mod:`.options` the options derived from the settings
models, and :mod:`.data`, :mod:`.train`, :mod:`.restore` the subcommands (imported here to register them).
"""

from ssai3d_dask.cli import data, restore, train  # noqa: F401  (register the subcommands)
from ssai3d_dask.cli.app import friendly_errors, main

__all__ = ["main", "friendly_errors"]
