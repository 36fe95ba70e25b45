"""Restore a large stack on a SLURM cluster with GPU nodes (dask-jobqueue).

Needs `pip install dask-jobqueue` on the login node and the same environment on the compute nodes.
Adapt once (one GPU job), then restore on many workers; each worker loads the model once and
processes regions; an interrupted run continues with resume=True.

From the shell the same is one option (the jobs described once in ~/.config/dask/jobqueue.yaml):

    ssai3d restore /data/brain.ome.zarr /scratch/brain-iso.ome.zarr --model /scratch/brain-iso.ome.zarr.model \
        --device cuda --cluster slurm --jobs 8

Before submitting, see what the run will cost from the login node (no cluster, nothing written):

    ssai3d restore /data/brain.ome.zarr /scratch/brain-iso.ome.zarr --model /scratch/brain-iso.ome.zarr.model \
        --region 128 512 512 --chunks 64 256 256 --dry-run

The client submits at most twice the cluster's GPU slots of region tasks at a time (RestoreSettings.in_flight),
each a few hundred bytes that names its region; workers read their own input crops from the shared file
system, so the client needs no more memory for a 10 TB volume than for a 10 GB one. The output is sharded
zarr v3 with one shard per region (RestoreSettings.shards to change it), regions whose input was never written are skipped.

    python examples/slurm_dask_jobqueue.py /data/brain.ome.zarr /scratch/brain-iso.ome.zarr
"""

import sys

from dask_jobqueue import SLURMCluster
from distributed import Client

from ssai3d_dask.adaptation.adapt import adapt
from ssai3d_dask.settings import AdaptSettings
from ssai3d_dask.settings import FinetuneSettings
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings
from ssai3d_dask.io.volume import open_volume

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
