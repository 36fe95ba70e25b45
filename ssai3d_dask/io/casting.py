"""Casting restored float32 values to the output type: one rule for restoration and the pyramid."""

from __future__ import annotations

import numpy as np


def cast_output(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round (integer types), clip to the type's range and cast a float32 array, in place where it can."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        np.rint(y, out=y)
        np.clip(y, info.min, info.max, out=y)
    return y.astype(dtype, copy=False)
