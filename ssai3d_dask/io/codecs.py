"""Which codec pipeline zarr-python encodes and decodes chunks with.

``zarrs`` (the Rust zarrs library's codec pipeline for zarr-python, ``pip install ssai3d-dask[fast]``)
reads and writes the same arrays as zarr-python's own pipeline, faster on sharded arrays
(``benchmarks/results/throughput.md``). It is used when it is installed and the user has not chosen a
pipeline (zarr's ``codec_pipeline.path`` config, or ``ZARR_CODEC_PIPELINE__PATH``); ``SSAI3D_CODECS=zarr``
keeps zarr-python's. Every process that reads or writes calls :func:`select_codec_pipeline` (the io modules
do at import, so Dask workers do too).
"""

from __future__ import annotations

import logging
import os

import zarr

logger = logging.getLogger(__name__)

ZARRS = "zarrs.ZarrsCodecPipeline"
DEFAULT = "zarr.core.codec_pipeline.BatchedCodecPipeline"


def select_codec_pipeline() -> str:
    """Switch zarr to the zarrs pipeline when installed and nothing else was chosen; returns the one in use."""
    current = zarr.config.get("codec_pipeline.path")
    if current != DEFAULT or os.environ.get("SSAI3D_CODECS", "").lower() in ("zarr", "zarr-python"):
        return current
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return current
    zarr.config.set({"codec_pipeline.path": ZARRS})
    logger.debug("zarr codec pipeline: %s", ZARRS)
    return ZARRS
