"""Numeric precision of the networks: fp32, or bf16 autocast where the hardware computes bf16 fast.

``auto`` (the default everywhere) resolves once per device:

* CUDA with bf16 support (Ampere and later): bf16;
* a CPU with AMX-BF16 or AVX512-BF16 (recent Xeon, Zen 4 and later): bf16;
* anything else: fp32. On a CPU without those instructions, bf16 is emulated and 10-30x *slower* than fp32
  (measured on an AVX2 EPYC: benchmarks/results/compute.md), so ``bf16`` given explicitly there warns.

bf16 means autocast: weights, optimiser state and losses stay fp32 (master weights), convolutions and
matrix products run in bf16, and the reductions that need range or accumulation (LayerNorm, the SCA box
mean's integral image) run in fp32 inside the network. Networks run channels-last in every precision:
on CPU the fp32 forward of the ``small`` preset is 1.2-1.9x faster channels-last (oneDNN's preferred layout)
and bf16 needs it to reach the AMX kernels.
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch

from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_bf16_fast() -> bool:
    """Whether this CPU has bf16 instructions (AMX-BF16 or AVX512-BF16), detected once."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch: read the kernel's flags
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "amx_bf16" in flags or "avx512_bf16" in flags


def cuda_bf16_fast(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (auto/fp32/bf16) on ``device``."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    fast = cuda_bf16_fast(device) if device.type == "cuda" else cpu_bf16_fast()
    if precision == "auto":
        return "bf16" if fast else "fp32"
    if precision == "bf16" and not fast:
        if device.type == "cuda":
            raise SettingsError("--precision bf16: this GPU has no bf16 support; use --precision fp32 (or auto)")
        _warn_slow_bf16()
    return precision


@functools.cache
def _warn_slow_bf16() -> None:
    logger.warning("--precision bf16 on a CPU without AMX-BF16 or AVX512-BF16: bf16 is emulated here and runs "
                   "10-30x slower than fp32; --precision auto picks fp32 on this machine")


def autocast(precision: str, device: torch.device | str):
    """The compute context for a resolved precision: bf16 autocast, or nothing for fp32."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``model`` on ``device`` in channels-last layout (channels-last-3d for 3D networks; in place, also
    returned). Cheap when it already is, so every user of a cached model (each restore region) can call it."""
    device = torch.device(device)
    w = next((m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))), None)
    fmt = torch.channels_last_3d if w is not None and w.dim() == 5 else torch.channels_last
    on_device = w is not None and w.device.type == device.type and device.index in (None, w.device.index)
    if not on_device or not w.is_contiguous(memory_format=fmt):
        model.to(device=device, memory_format=fmt)
    return model


def as_input(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) or (B, C, D, H, W) batch in the networks' layout (channels-last)."""
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


_COMPILED: dict[int, tuple] = {}


def compiled_forward(fn, model: torch.nn.Module, enabled: bool):
    """``fn(model, x)`` compiled with TorchInductor once per model (``enabled``), else ``fn`` itself.

    On CUDA the eager NAFNet is bound by its element-wise kernels, not by its convolutions (torch profiler
    on an H100, ``small``, batch 32: LayerNorm over 16-128 channels 40%, the SCA integral image's cumsum
    13%, copies and adds most of the rest, cuDNN convolutions 6-10%), so bf16 alone gains 1.04-1.09x there.
    Inductor fuses them: the forward is 5.9x faster (``small``) and 5.0x (``gopro-width32``), and a whole
    restore 2.6x faster than fp32 eager, after a compilation of about a minute per worker
    (benchmarks/results/compute_cuda.md). Shapes are compiled dynamic, so border regions and the last
    batch do not recompile. Compilation failures fall back to eager with a warning.
    """
    if not enabled:
        return lambda x: fn(model, x)
    key = id(model)
    if key not in _COMPILED or _COMPILED[key][0] is not model:
        compiled = torch.compile(lambda x: fn(model, x), dynamic=True)
        state = {"ok": True}

        def run(x):
            if state["ok"]:
                try:
                    return compiled(x)
                except Exception as exc:  # noqa: BLE001 - any compiler failure: eager gives the same result
                    state["ok"] = False
                    logger.warning("torch.compile failed (%s: %s); running eager", type(exc).__name__, exc)
            return fn(model, x)

        _COMPILED.clear()
        _COMPILED[key] = (model, run)
    return _COMPILED[key][1]
