"""One run per output: a lock file beside the output that names its holder.

A resubmitted cluster job, or a second ``--resume``/``--overwrite`` started by hand while the first still
runs, would otherwise write or delete the same output at the same time. The lock is the file
``<output>.lock`` (beside the output, not inside it: ``--overwrite`` deletes the output folder, and the
lock must guard that too). It holds the holder's host, pid, process start time, start date and command
line, and is created atomically (``O_CREAT | O_EXCL``), so of two runs starting together one wins.

A lock is stale when its holder is gone: on the same host, its pid no longer runs the process that took
it (pids are reused, so the process start time is compared too); on another host, which cannot be asked,
when the holder's heartbeat (it touches the file every :data:`HEARTBEAT_S` seconds) is older than
:data:`STALE_S`. A stale lock is taken over with a warning naming the former holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ssai3d_dask.errors import VolumeError

logger = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
#: A lock from another host whose heartbeat is older than this is taken to be abandoned.
STALE_S = 180.0
_HELD: dict[str, RunLock] = {}  # locks this process holds, by path: taking one again is a no-op


def lock_path(out: str | Path) -> Path:
    p = Path(out).absolute()
    return p.with_name(p.name + ".lock")


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def holder_alive(holder: dict, mtime: float, now: float | None = None) -> bool:
    """Whether the run that wrote ``holder`` may still be running (see the module docstring)."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname():
        started = _process_start(int(holder.get("pid", -1)))
        return started is not None and abs(started - float(holder.get("process_start", started))) < 1.0
    return now - mtime < STALE_S


def describe(holder: dict) -> str:
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


class RunLock:
    """``with RunLock(out):`` holds ``<out>.lock`` for the block (re-entrant within one process)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = lock_path(out)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nested = False

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv), "token": self.token}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
        return True

    def acquire(self) -> RunLock:
        if str(self.path) in _HELD:
            self._nested = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                break
            try:
                text, mtime = self.path.read_text(), self.path.stat().st_mtime
            except FileNotFoundError:  # released between our two looks: try again
                continue
            try:
                holder = json.loads(text)
            except ValueError:  # being written this instant, or cut short by a crash
                holder = {}
                if time.time() - mtime < 5:
                    raise VolumeError(f"output {self.out} is being locked by another run ({self.path}); "
                                      f"wait for it to finish") from None
            if holder and holder_alive(holder, mtime):
                raise VolumeError(f"output {self.out} is being written by another run ({describe(holder)}); wait "
                                  f"for it to finish, or stop it; if it is gone, delete {self.path}")
            logger.warning("taking over the stale lock %s of a run that is gone (%s)", self.path,
                           describe(holder) if holder else "unreadable")
            self.path.unlink(missing_ok=True)
        else:
            raise VolumeError(f"output {self.out}: another run took the lock {self.path} at the same time; "
                              f"only one run may write an output")
        _HELD[str(self.path)] = self
        self._thread = threading.Thread(target=self._heartbeat, name="ssai3d-lock", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if self._nested:
            return
        self._stop.set()
        _HELD.pop(str(self.path), None)
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
