"""napari plugin (``pip install 'ssai3d-dask[napari]'``): a dock widget that makes an image layer isotropic.

:mod:`._logic` holds what the widget runs (no Qt: tested without a display); :mod:`._widget` the Qt side,
registered by the npe2 manifest ``napari.yaml``.
"""

from ssai3d_dask.napari._logic import CancellableProgress, neuroglancer_link, restore_layer_data

__all__ = ["CancellableProgress", "neuroglancer_link", "restore_layer_data"]
