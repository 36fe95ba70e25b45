"""Check that outputs open in neuroglancer and napari: install the viewers, run the `viewer` tests, keep
the screenshots.

    python examples/viewer_check.py [--no-install] [--out viewer-check]

Installs (unless --no-install) neuroglancer + selenium and napari[pyqt5] + napari-ome-zarr from PyPI, and
Chromium, its driver and Xvfb from Debian when apt-get is available (as root). Then runs
``pytest -m viewer tests/test_viewers.py`` with the screenshots written to --out: neuroglancer in headless
Chromium (software WebGL) loading a restored OME-Zarr (zarr v3 and v2) from a local CORS server, and
napari under Xvfb reading it with napari-ome-zarr. Nothing is downloaded at run time by the package itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install() -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "neuroglancer", "selenium", "napari[pyqt5]",
                    "napari-ome-zarr"], check=True)
    missing = [p for p in ("chromium", "chromedriver", "xvfb-run") if shutil.which(p) is None]
    if shutil.which("apt-get") and os.geteuid() == 0:
        # Chromium for neuroglancer; Xvfb and the X libraries Qt's xcb platform needs for napari
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver", "xvfb",
                        "xauth", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-xinerama0", "libxcb-image0",
                        "libxcb-render-util0", "libxkbcommon-x11-0", "libxcb-randr0", "libxcb-shape0"], check=True)
    elif missing:
        print(f"still missing {', '.join(missing)}: install Chromium, chromedriver and Xvfb with your package manager")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-install", action="store_true", help="Use what is installed.")
    ap.add_argument("--out", type=Path, default=Path("viewer-check"), help="Where the screenshots go.")
    args = ap.parse_args()
    if not args.no_install:
        install()
    env = dict(os.environ, SSAI3D_SCREENSHOTS=str(args.out.resolve()))
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "viewer", "-rs", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_viewers.py")], env=env, cwd=ROOT)
    print(f"screenshots: {args.out.resolve()}")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
