"""Pure array operations shared by adaptation, restoration and evaluation.

Normalisation, resampling, padding, block grids and denoising: no I/O, no dask, no device choice.
"""
