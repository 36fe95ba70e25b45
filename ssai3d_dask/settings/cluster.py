"""Where ``restore`` and ``run`` compute: a LocalCluster on this machine, batch jobs through dask-jobqueue
(SLURM, PBS, LSF, configured once in the user's ``jobqueue.yaml``), or a scheduler that already runs."""

from __future__ import annotations

from pydantic import Field, field_validator

from ssai3d_dask.settings.base import Settings, check_size

#: --cluster values that submit workers as batch jobs (dask-jobqueue's cluster classes).
BATCH_SYSTEMS = ("slurm", "pbs", "lsf")


class ClusterSettings(Settings):
    """The Dask cluster a restoration runs on (the settings file's ``cluster`` section)."""

    cluster: str = Field("local", description="local: workers on this machine; slurm, pbs or lsf: workers "
                         "submitted as batch jobs by dask-jobqueue, with the queue, cores, memory and walltime of "
                         "your jobqueue.yaml; an address (tcp://host:8786) or a scheduler file (.json): a "
                         "scheduler that already runs.")
    jobs: int | None = Field(None, ge=1, description="Batch jobs to submit for --cluster slurm/pbs/lsf (default: "
                             "1); with --adaptive, the most to scale to.")
    adaptive: bool = Field(False, description="Scale the batch jobs with the work (between 1 and --jobs) instead "
                           "of keeping --jobs running.")
    workers: int | None = Field(None, ge=1, description="LocalCluster workers (default: one per GPU, else "
                                "min(4, cores/2) for networks and one per core for --method interp).")
    threads_per_worker: int | None = Field(None, ge=1, description="Region tasks at once per LocalCluster worker "
                                           "(default: 1 on CPU, where torch uses the other cores; 2 per GPU, so "
                                           "that one task reads and writes while the other computes).")
    memory_limit: str | None = Field(None, description="Per-worker memory limit of a LocalCluster, e.g. 4GiB "
                                     "(default: auto).")

    @field_validator("cluster")
    @classmethod
    def _known(cls, v: str) -> str:
        v = v.strip()
        if v in ("local", *BATCH_SYSTEMS) or "://" in v or v.endswith(".json") or v.rsplit(":", 1)[-1].isdigit():
            return v
        raise ValueError(f"--cluster {v!r} is not local, {', '.join(BATCH_SYSTEMS)}, a scheduler address "
                         f"(tcp://host:8786) or a scheduler file (.json)")

    @field_validator("memory_limit")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        return check_size(v, "--memory-limit")

    @property
    def is_local(self) -> bool:
        return self.cluster == "local"
