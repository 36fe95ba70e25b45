import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(int(os.environ.get("SSAI3D_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _fp32_unless_asked(monkeypatch):
    """`--precision auto` resolves to bf16 on a CPU with AMX-BF16/AVX512-BF16 and to fp32 elsewhere, so tests
    that compare a blockwise restore with the fp32 whole-volume reference (to 1e-4 of the range) would pass or
    fail with the CI machine's CPU. Tests see a CPU without fast bf16: auto means fp32; tests that ask for bf16
    get it (emulated or not), and bf16's own tolerances are tested there."""
    import ssai3d_dask.models.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_fast", lambda: False)


def make_model_dir(path, z_factor: float, low: float = 0.0, high: float = 1.0, denoise_h=None, seed: int = 0):
    """A small adapted-model folder with non-trivial random weights (fresh NAFBlocks are identities)."""
    import torch

    from ssai3d_dask.models.folder import write_folder
    from ssai3d_dask.models.manifest import ModelManifest
    from ssai3d_dask.ops.denoise import Denoiser
    from ssai3d_dask.ops.normalize import Normalization
    from ssai3d_dask.models.nafnet import build

    torch.manual_seed(seed)
    model = build("small")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("beta", "gamma")):
                p.normal_(0, 0.2)
    manifest = ModelManifest("adapted", z_factor, Normalization(low, high, foreground_threshold=0.1),
                             Denoiser(denoise_h, 0.05 if denoise_h else 0.0, "on" if denoise_h else "off"),
                             pool_window_px=model.local_window())
    write_folder(path, model, manifest)
    return path


@pytest.fixture
def model_dir_factory(tmp_path):
    def factory(z_factor, **kw):
        return make_model_dir(tmp_path / f"model-{z_factor}-{len(kw)}", z_factor, **kw)

    return factory
