"""The model configuration that travels with the weights.

A checkpoint must tell its loader how to build the network and how to feed it (input size,
normalisation), so the engine never guesses preprocessing. Everything here is JSON-serialisable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

HeadKind = Literal["gaussian", "dldl"]

# Legacy bucket edges in years: <13, 13-15, 16-17, 18-24, 25+. They line up with the thresholds
# (13, 16, 18) the legacy system decided on, so the baseline is evaluated on its own terms.
LEGACY_BUCKET_EDGES: tuple[float, ...] = (13.0, 16.0, 18.0, 25.0)
LEGACY_BUCKET_NAMES: tuple[str, ...] = ("<13", "13-15", "16-17", "18-24", "25+")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Architecture, preprocessing and output range of one model.

    `version` names the weights (bumped per training run), `name` the architecture family.
    """

    name: str = "age_regressor"
    version: str = "0"
    input_size: int = 64
    width: int = 16
    depth: int = 2  # conv blocks per stage
    stages: int = 3
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    age_min: float = 1.0
    age_max: float = 90.0
    head: HeadKind = "dldl"  # by measurement (issue 3 note): lower MAE, NLL and minor->adult rate
    dldl_bins: int = 90
    bucket_edges: tuple[float, ...] = LEGACY_BUCKET_EDGES
    # Representative age of each bucket (used to turn bucket probabilities into a mean); set from
    # the training data so the baseline's MAE is as fair as it can be.
    bucket_centres: tuple[float, ...] = (9.0, 14.5, 17.0, 21.0, 40.0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def num_buckets(self) -> int:
        return len(self.bucket_edges) + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Build from JSON, rejecting unknown keys so a typo or a newer format is not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        values = dict(raw)
        for key in ("mean", "std", "bucket_edges", "bucket_centres"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16, got {self.input_size}")
        if self.width < 1 or self.depth < 1 or self.stages < 1:
            raise ValueError("width, depth and stages must be >= 1")
        if not self.age_min < self.age_max:
            raise ValueError(f"age_min ({self.age_min}) must be below age_max ({self.age_max})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 channels and std > 0")
        if len(self.bucket_centres) != self.num_buckets:
            raise ValueError(f"bucket_centres needs {self.num_buckets} values, got {len(self.bucket_centres)}")
        if self.head not in ("gaussian", "dldl"):
            raise ValueError(f"head must be 'gaussian' or 'dldl', got {self.head!r}")
