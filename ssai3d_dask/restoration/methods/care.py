"""``--method care``: a CARE U-Net trained from scratch on this stack (``ssai3d train-care``), on XZ/YZ slices."""

from __future__ import annotations

from ssai3d_dask.restoration.methods.network import NetworkRestoration


class CARE(NetworkRestoration):
    name = "care"
    label = "CARE"
    folder_kind = "care"
