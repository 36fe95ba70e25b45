"""ssai3d-dask: isotropic 3D resolution from a single anisotropic stack, out of core."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ssai3d-dask")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
