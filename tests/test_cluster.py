"""Clusters as an option: the job script dask-jobqueue submits for --cluster slurm, a SLURM stand-in that runs
it, and a scheduler and two workers started as separate processes (as on a cluster), one of them killed
mid-run: every output byte-identical to the LocalCluster result."""

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from ssai3d_dask.errors import SettingsError
from ssai3d_dask.evaluation.simulate import ForwardModel, simulate
from ssai3d_dask.io.omezarr import write_multiscale
from ssai3d_dask.restoration.cluster import batch_cluster
from ssai3d_dask.settings import ClusterSettings

pytest.importorskip("dask_jobqueue")

SLURM_ENV = {"DASK_JOBQUEUE__SLURM__CORES": "1", "DASK_JOBQUEUE__SLURM__MEMORY": "2GB",
             "DASK_JOBQUEUE__SLURM__PROCESSES": "1", "DASK_JOBQUEUE__SLURM__WALLTIME": "00:10:00"}


def _stack(tmp_path):
    sim = simulate("strands", (32, 48, 48), seed=3, model=ForwardModel(0.5, 3.0, z_factor=4.0))
    src = tmp_path / "raw.ome.zarr"
    write_multiscale((sim.raw * 60000).astype(np.uint16), src, (0.4, 0.1, 0.1), (8, 48, 48))
    return src


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ssai3d_dask.cli", "-q", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def _level0(path):
    return zarr.open_array(str(path / "0"), mode="r")[...].tobytes()


def test_the_slurm_job_script_asks_for_the_gpu_resource_and_the_configured_job(monkeypatch):
    import dask

    with dask.config.set({"jobqueue.slurm.cores": 8, "jobqueue.slurm.memory": "32GB",
                          "jobqueue.slurm.queue": "gpu", "jobqueue.slurm.job-extra-directives": ["--gres=gpu:1"]}):
        cluster = batch_cluster(ClusterSettings(cluster="slurm", jobs=4), device="cuda", start=False)
        script = cluster.job_script()
        cluster.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH --cpus-per-task=8" in script and "--gres=gpu:1" in script
    assert "--resources GPU=1" in script and "dask_worker" in script
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(SettingsError, match="jobqueue.yaml"):
            batch_cluster(ClusterSettings(cluster="pbs"), start=False)
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(SettingsError, match=r"ssai3d-dask\[cluster\]"):
        batch_cluster(ClusterSettings(cluster="lsf"))
    with pytest.raises(SettingsError, match="is not local, slurm"):
        ClusterSettings(cluster="slurmm")


@pytest.mark.slow
def test_restore_on_slurm_jobs_equals_the_local_result(tmp_path):
    """`--cluster slurm --jobs 2` with sbatch/squeue/scancel stand-ins that run each job script here."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    # dask-jobqueue deletes the job script once sbatch returns: keep a copy, as SLURM does
    (bin_ / "sbatch").write_text('#!/bin/bash\ncp "${@: -1}" "$0.job$$.sh"\n'
                                 'setsid bash "$0.job$$.sh" > "$0.job$$.log" 2>&1 &\necho "Submitted batch job $!"\n')
    (bin_ / "scancel").write_text('#!/bin/bash\nfor j in "$@"; do kill -TERM -- "-$j" 2>/dev/null; done; exit 0\n')
    (bin_ / "squeue").write_text("#!/bin/bash\nexit 0\n")
    for f in bin_.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    env = os.environ | SLURM_ENV | {"PATH": f"{bin_}:{os.environ['PATH']}"}
    src = _stack(tmp_path)
    args = ("--method", "interp", "--chunks", 16, 16, 16, "--region", 32, 16, 16)
    local = _cli("restore", src, tmp_path / "local.ome.zarr", *args)
    assert local.returncode == 0, local.stderr
    res = _cli("restore", src, tmp_path / "slurm.ome.zarr", *args, "--cluster", "slurm", "--jobs", 2, env=env)
    assert res.returncode == 0, res.stderr
    assert _level0(tmp_path / "slurm.ome.zarr") == _level0(tmp_path / "local.ome.zarr")
    scripts = list(bin_.glob("sbatch.job*.sh"))
    assert len(scripts) == 2 and all("#SBATCH" in f.read_text() for f in scripts)  # two jobs ran the workers


@pytest.mark.slow
def test_scheduler_and_workers_started_apart_with_one_killed_mid_run(tmp_path, model_dir_factory):
    src = _stack(tmp_path)
    mdir = model_dir_factory(4.0, high=60000.0)
    args = ("--model", mdir, "--chunks", 16, 16, 16, "--region", 16, 16, 16, "--halo", 32)
    local = _cli("restore", src, tmp_path / "local.ome.zarr", *args, "--workers", 2)
    assert local.returncode == 0, local.stderr
    sched_file = tmp_path / "scheduler.json"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
                               str(sched_file), "--port", "0", "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        for i in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                           str(sched_file), "--nthreads", "1", "--no-nanny", "--name", f"w{i}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        out = tmp_path / "apart.ome.zarr"
        run = subprocess.Popen([sys.executable, "-m", "ssai3d_dask.cli", "-q", "restore", str(src), str(out),
                                *map(str, args), "--cluster", str(sched_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        done = out / ".ssai3d" / "done"
        deadline = time.time() + 300
        while time.time() < deadline and (not done.exists() or not list(done.glob("*.json"))):
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGKILL)  # a worker lost mid-run: its regions go to the other
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
        n_regions = len(list(done.glob("*.json")))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert n_regions == len(list((tmp_path / "local.ome.zarr" / ".ssai3d" / "done").glob("*.json"))) > 2
    assert _level0(out) == _level0(tmp_path / "local.ome.zarr")
