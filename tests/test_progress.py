"""Progress is passed in: the library draws nothing by itself, the CLI draws bars, and -q silences them."""

import subprocess
import sys

import numpy as np

from ssai3d_dask.io.omezarr import write_multiscale
from ssai3d_dask.io.volume import open_volume
from ssai3d_dask.progress import Bar, Progress, as_progress
from ssai3d_dask.restoration.pipeline import restore
from ssai3d_dask.settings import RestoreSettings


class Recorder(Progress):
    def __init__(self):
        self.calls = []

    def bar(self, desc, total, initial=0, unit="it"):
        rec = self.calls

        class B(Bar):
            def update(self, n=1):
                rec.append((desc, "update", n))

            def close(self):
                rec.append((desc, "close", total))

        rec.append((desc, "start", total))
        return B()


def _stack(tmp_path):
    raw = (np.random.default_rng(0).random((8, 48, 48)) * 1000).astype(np.uint16)
    write_multiscale(raw, tmp_path / "in.ome.zarr", (2.0, 1.0, 1.0), chunks=(8, 16, 16))
    return tmp_path / "in.ome.zarr"


def test_library_is_silent_by_default_and_reports_to_the_progress_it_is_given(tmp_path, capfd):
    src = _stack(tmp_path)
    s = RestoreSettings(method="interp", chunks=(16, 16, 16), region=(16, 16, 16))
    restore(open_volume(src), None, tmp_path / "a.ome.zarr", s)
    out, err = capfd.readouterr()
    assert out == "" and "restore" not in err and "%|" not in err
    rec = Recorder()
    restore(open_volume(src), None, tmp_path / "b.ome.zarr", s, progress=rec)
    n = 1 * 3 * 3  # 16 output planes, 48 / 16 = 3 regions along y and x
    assert rec.calls[0] == ("restore", "start", n) and rec.calls[-1] == ("restore", "close", n)
    assert sum(c[2] for c in rec.calls if c[1] == "update") == n
    assert type(as_progress(None)) is Progress and type(as_progress(False)) is Progress


def test_cli_draws_bars_and_quiet_prints_nothing_but_the_result(tmp_path):
    src = _stack(tmp_path)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ssai3d_dask.cli", *args, "restore", str(src),
                               str(tmp_path / f"o{len(args)}.ome.zarr"), "--method", "interp", "--workers", "1"],
                              capture_output=True, text=True, timeout=300)

    loud, quiet = cli(), cli("-q")
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "restore" in loud.stderr and "region" in loud.stderr  # the tqdm bar, on stderr
    assert quiet.stdout.strip().endswith("o1.ome.zarr")
    assert "%|" not in quiet.stderr and " INFO " not in quiet.stderr, quiet.stderr
