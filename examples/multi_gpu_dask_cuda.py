"""Restore on one workstation with several GPUs (dask-cuda: one worker pinned to each GPU).

Needs `pip install dask-cuda`. Equivalent CLI on a running scheduler:
    dask-scheduler &  CUDA_VISIBLE_DEVICES=0,1 dask-cuda-worker tcp://127.0.0.1:8786 --resources GPU=1 &
    ssai3d run stack.tif out.ome.zarr --cluster tcp://127.0.0.1:8786 --device cuda

    python examples/multi_gpu_dask_cuda.py stack.tif out.ome.zarr
"""

import sys

from dask_cuda import LocalCUDACluster
from distributed import Client

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.settings import AdaptSettings
from ssai3d_dask.settings import FinetuneSettings
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.io.volume import open_volume

if __name__ == "__main__":
    src, out = sys.argv[1], sys.argv[2]
    cluster = LocalCUDACluster(resources={"GPU": 1})  # one worker per visible GPU
    client = Client(cluster)
    print("dashboard:", client.dashboard_link)
    vol = open_volume(src)
    adapt(vol, out + ".model", AdaptSettings(finetune=FinetuneSettings(device="cuda")), overwrite=True)
    restore(vol, out + ".model", out, RestoreSettings(device="cuda", batch=64), client=client, resume=True)
