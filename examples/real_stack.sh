#!/usr/bin/env bash
# Restore a real light-sheet crop from ../shared/data (mesoSPIM nuclei, voxel size unknown: assumed 5 x 1.5 x 1.5 um
# would resample z x3.3; the crop looks resampled already, so here z is treated as sampled like x (1 1 1)).
set -euo pipefail
DATA=${DATA:-../shared/data}
ssai3d info "$DATA/cellseg3d_mesospim_nuclei/c5image.tif" --voxel-size 1 1 1
ssai3d run "$DATA/qcanet_embryo_nuclei/8_cell_stage.tif" embryo-iso.ome.zarr --voxel-size 2.18 1 1 \
    --patch-px 64 --n-patches 128 --iterations 150 --chunks 64 64 64 --region 64 128 128 --overwrite
ssai3d info embryo-iso.ome.zarr
