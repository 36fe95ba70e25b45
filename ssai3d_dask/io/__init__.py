"""Reading and writing volumes: lazy readers, source handles, the multiscale OME-Zarr writer."""

from ssai3d_dask.io.codecs import select_codec_pipeline

select_codec_pipeline()  # zarrs' codec pipeline when installed (every process that imports the io modules)
