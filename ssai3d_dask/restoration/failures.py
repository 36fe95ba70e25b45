"""What a failed or interrupted restoration leaves and says: no output or a resumable one, the command that
resumes it, and one-line errors for a full disk or a lost mount."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ssai3d_dask.errors import VolumeError
from ssai3d_dask.io.omezarr import MultiscaleWriter

logger = logging.getLogger(__name__)


def after_failure(out: Path, writer: MultiscaleWriter, created: bool, n_keep: int) -> None:
    """A failed restoration leaves no output, or a resumable one, and says which."""
    done = len(writer.done_blocks())
    if created and done == 0:
        shutil.rmtree(out, ignore_errors=True)
        logger.error("restoration failed before any region was written; nothing was kept at %s", out)
    else:
        logger.error("restoration stopped with %d of %d regions written; %s is resumable: rerun the same command "
                     "with --resume", done, n_keep, out)


def resume_command() -> str:
    """The command line that finishes this run: the same arguments with --resume (and without --overwrite)."""
    import shlex
    import sys

    args = [a for a in sys.argv[1:] if a != "--overwrite"]
    if Path(sys.argv[0]).name not in ("ssai3d", "__main__.py") or not args:  # called from Python
        return "call restore() again with resume=True"
    return shlex.join(["ssai3d", *args, *([] if "--resume" in args else ["--resume"])])


def storage_error(exc: OSError, out: Path, bytes_left: int) -> VolumeError | None:
    """A one-line error for an output that filled up or went away while being written (None for others)."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(out if out.exists() else out.parent).free
        except OSError:
            free = None
        return VolumeError(f"no space left to write {out} ({exc.strerror}; {_gib(free)} free, up to "
                           f"{_gib(bytes_left)} still to write, uncompressed); free space or raise the quota, then: "
                           f"{resume_command()}")
    if exc.errno in (errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.EROFS) or not out.parent.exists():
        return VolumeError(f"the output {out} became unwritable ({exc.strerror or exc}): was its file system "
                           f"unmounted or made read-only? When it is back: {resume_command()}")
    return None


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.2f} GiB"
