"""How much fine detail a volume carries along each axis, without a ground truth.

A restoration may sharpen the z axis up to what the lateral planes show and no further: tissue has no
preferred direction at the scale of a few pixels, so detail along z beyond the lateral planes' is detail
the method made up (over-deblurring, ringing, a texture the network learned elsewhere). The measure here is
the *high-band power*: the variance per voxel that periods under 4 px carry along an axis (Hann-windowed
lines, each line's mean removed). A restored crop is compared with the input's own lateral planes in the
same (normalised) intensity units. (A share of each axis' own power was tried first: it is undefined where
an axis carries no power at all, e.g. structure that is constant along z.)
"""

from __future__ import annotations

import numpy as np

#: Periods shorter than this many pixels make up the "high band".
HIGH_BAND_PERIOD_PX = 4.0


def high_band_power(vol: np.ndarray, axis: int, f0: float = 1.0 / HIGH_BAND_PERIOD_PX) -> float:
    """Variance per voxel carried by periods under ``1/f0`` px along ``axis`` (Hann-windowed lines, each
    line's mean removed; by Parseval, the windowed power above ``f0`` over the window's energy)."""
    x = np.moveaxis(np.asarray(vol, np.float64), axis, -1)
    n = x.shape[-1]
    if n < 8:
        raise ValueError(f"axis {axis} has {n} px; the spectrum needs at least 8")
    w = np.hanning(n)
    x = x - x.mean(axis=-1, keepdims=True)
    power = np.abs(np.fft.rfft(x * w, axis=-1)) ** 2
    power = power.reshape(-1, power.shape[-1]).mean(axis=0)
    f = np.fft.rfftfreq(n)
    twice = np.where((f > 0) & (f < 0.5), 2.0, 1.0)  # rfft keeps one of each +-f pair
    band = f >= f0
    return float((twice[band] * power[band]).sum() / (n * (w ** 2).sum()))


def axial_excess(restored: np.ndarray, lateral: np.ndarray, f0: float = 1.0 / HIGH_BAND_PERIOD_PX) -> dict:
    """Fine detail of a restored (z, y, x) crop along z and along x/y, each over the lateral planes' own.

    ``lateral`` holds input planes (n, y, x) of the same place, prepared as the restoration prepared its
    input (normalised and denoised), in the restored crop's intensity units. Ratios near or below 1: the
    restoration is no sharper along z than the stack is laterally. Above 1: detail was added that the stack
    does not show anywhere. A flat reference (no detail at all) gives inf for any detail and 0 for none.
    """
    ref = 0.5 * (high_band_power(lateral, -1, f0) + high_band_power(lateral, -2, f0))
    out_z = high_band_power(restored, 0, f0)
    out_x = 0.5 * (high_band_power(restored, -1, f0) + high_band_power(restored, -2, f0))

    def ratio(a: float) -> float:
        return a / ref if ref > 0 else (0.0 if a == 0 else float("inf"))

    return {"z": ratio(out_z), "lateral": ratio(out_x), "reference_power": ref, "period_px": 1.0 / f0}
