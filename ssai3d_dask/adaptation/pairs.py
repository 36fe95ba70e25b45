"""On-the-fly (blurred, sharp) training pairs from lateral patches, in torch on the training device.

A sharp lateral patch is randomly flipped/transposed (so x and y both play
"z"), blurred with a random PSF of the bank along axis 0 (rows: the axis that
holds z in an XZ/YZ slice at inference), then, when ``z_factor = dz/dx > 1``,
sampled every ``z_factor`` rows at a random phase and interpolated back with
the inference interpolation (:func:`ssai3d_dask.adaptation.psf.axial_forward`).

Noise: in a raw stack the noise is added after the blur, so the axial slices the network restores carry it
unblurred, independent from plane to plane. A blurred lateral patch has its noise blurred away. When the
stack is noisy (:func:`ssai3d_dask.ops.denoise.fit_noise_model`, fitted on the planes the pairs come from,
denoised or not, as inference sees them), the blurred input gets Poisson-Gaussian noise of the fitted
variance at the blurred signal, before the z sampling, as the forward model does.
"""

from __future__ import annotations

import numpy as np
import torch

from ssai3d_dask.adaptation.psf import PSFBank, axial_forward, conv2d_per_sample
from ssai3d_dask.ops.denoise import NoiseModel


class PairSynthesizer:
    """Makes training pairs for one stack.

    Parameters
    ----------
    bank : PSFBank
    z_factor : float
        dz / dx of the stack (1 = no undersampling).
    device : str or torch.device
    """

    def __init__(self, bank: PSFBank, z_factor: float, device: str | torch.device = "cpu",
                 noise: NoiseModel | None = None) -> None:
        self.bank = bank
        self.noise = noise if noise is not None and noise.used else None
        self.z_factor = float(z_factor)
        self.kernels = torch.from_numpy(bank.kernels()).to(device)
        self.device = torch.device(device)

    def __call__(self, sharp: torch.Tensor, rng: np.random.Generator,
                 psf_index: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(blurred, sharp), both (B, 1, P, P) on the device.

        ``psf_index`` fixes which bank kernel each sample uses (default random).
        """
        sharp = sharp.to(self.device)
        b = sharp.shape[0]
        if rng.uniform() < 0.5:
            sharp = sharp.transpose(-1, -2)
        flips = [d for d in (-1, -2) if rng.uniform() < 0.5]
        if flips:
            sharp = sharp.flip(flips)
        idx = rng.integers(0, len(self.kernels), b) if psf_index is None else np.asarray(psf_index)
        blurred = conv2d_per_sample(sharp, self.kernels[torch.from_numpy(idx).to(self.device)])
        if self.noise is not None:
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
            sd = (self.noise.gain * blurred + self.noise.offset).clamp_min(0).sqrt()
            blurred = blurred + sd * torch.randn(blurred.shape, generator=gen).to(self.device)
        if self.z_factor > 1:
            phases = rng.uniform(0, self.z_factor, b)
            blurred = torch.stack([axial_forward(blurred[i], self.z_factor, dim=-2, phase=float(phases[i]))
                                   for i in range(b)])
        return blurred.contiguous(), sharp.contiguous()


def batches(patches: np.ndarray, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random batch (B, 1, P, P) from (n, P, P) patches."""
    idx = rng.integers(0, len(patches), batch_size)
    return torch.from_numpy(np.ascontiguousarray(patches[idx][:, None]))
