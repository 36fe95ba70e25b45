"""Two channels, one command: a (c, z, y, x) OME-Zarr restored with one model per channel.

Uses the cellfinder serial two-photon crop in ../shared/data (signal + autofluorescence, 30 planes at
5 um, 2 um pixels: dz/dx = 2.5). Stacks the two TIFFs into one OME-Zarr with labelled channels (a crop of
256 x 256 px by default, to keep the CPU run short), then runs

    ssai3d run stp.ome.zarr stp-iso.ome.zarr

which adapts the shipped model to each channel on its own (stp-iso.ome.zarr.model/c0, c1) and writes one
isotropic OME-Zarr with axes (c, z, y, x), both channels labelled and windowed.

    python examples/multichannel_stp.py [--out DIR] [--full]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from ssai3d_dask.io.omezarr import MultiscaleWriter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellfinder_stp_cortex"

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--out", type=Path, default=Path("stp-example"))
ap.add_argument("--full", action="store_true", help="Restore the whole 510 x 667 px field (slower).")
args = ap.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

crop = (slice(None), slice(None), slice(None)) if args.full else (slice(None), slice(128, 384), slice(200, 456))
channels = [tifffile.imread(DATA / name)[crop] for name in ("signal_ch0.tif", "background_ch1.tif")]
stack = np.stack(channels)  # (c, z, y, x)
src = args.out / "stp.ome.zarr"
writer = MultiscaleWriter(src, stack.shape[1:], stack.dtype, (5.0, 2.0, 2.0), (16, 256, 256), overwrite=True,
                          lead_axes="c", lead_shape=(2,), channel_labels=["signal", "autofluorescence"], name="stp")
writer.level0[...] = stack
writer.finalize()

out = args.out / "stp-iso.ome.zarr"
t0 = time.perf_counter()
subprocess.run([sys.executable, "-m", "ssai3d_dask.cli", "run", str(src), str(out), "--overwrite"], check=True)
print(f"ssai3d run on {stack.shape} (c, z, y, x): {time.perf_counter() - t0:.0f} s")
subprocess.run([sys.executable, "-m", "ssai3d_dask.cli", "info", str(out)], check=True)
