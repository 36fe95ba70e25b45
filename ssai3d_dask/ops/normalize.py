"""Global affine intensity normalisation, estimated once per volume and stored with the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Normalization:
    """Global affine intensity normalisation: ``(x - low) / (high - low)``.

    ``low``/``high`` are robust percentiles of the whole volume, estimated
    from sampled chunks; stored with the model so inference uses the same numbers.
    """

    low: float
    high: float
    percentiles: tuple[float, float] = (0.1, 99.9)
    foreground_threshold: float = 0.0  # in normalised units
    n_voxels_sampled: int = 0

    def apply(self, x):
        return (x - self.low) / max(self.high - self.low, 1e-12)

    def invert(self, y):
        return y * (self.high - self.low) + self.low

    def to_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(**{**d, "percentiles": tuple(d.get("percentiles", (0.1, 99.9)))})
