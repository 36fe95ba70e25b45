"""``python -m ssai3d_dask.cli``."""

from ssai3d_dask.cli import main

main()
