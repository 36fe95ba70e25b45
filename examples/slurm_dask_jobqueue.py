"""Restore a large stack on a SLURM cluster with GPU nodes (dask-jobqueue).

Needs `pip install dask-jobqueue` on the login node and the same environment on the compute nodes.
Adapt once (one GPU job), then restore on many workers; each worker loads the model once and
processes regions; an interrupted run continues with resume=True.

    python examples/slurm_dask_jobqueue.py /data/brain.ome.zarr /scratch/brain-iso.ome.zarr
"""

import sys

from dask_jobqueue import SLURMCluster
from distributed import Client

from ssai3d_dask.adapt import AdaptSettings, adapt
from ssai3d_dask.finetune import FinetuneSettings
from ssai3d_dask.pipeline import RestoreSettings, restore
from ssai3d_dask.volume import open_volume

src, out = sys.argv[1], sys.argv[2]
cluster = SLURMCluster(
    queue="gpu",
    cores=8,
    processes=1,  # one worker per job = one GPU per worker
    memory="64GiB",
    walltime="08:00:00",
    job_extra_directives=["--gres=gpu:1"],
    worker_extra_args=["--resources", "GPU=1"],  # restore() asks for this resource on CUDA
)
cluster.scale(jobs=8)
client = Client(cluster)
print("dashboard:", client.dashboard_link)

vol = open_volume(src)  # lazy: nothing is read here
model_dir = out + ".model"
adapt(vol, model_dir, AdaptSettings(finetune=FinetuneSettings(device="cuda", iterations=2000)), overwrite=True)
restore(vol, model_dir, out, RestoreSettings(device="cuda", region=(128, 512, 512), chunks=(64, 256, 256), batch=64),
        client=client, resume=True)
