"""Reading and writing volumes: lazy readers, source handles, the multiscale OME-Zarr writer."""
