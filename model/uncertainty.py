"""Calibrated per-frame uncertainty and the per-model error floor.

Two numbers per model version, fitted after training on the validation split and stored in the
checkpoint metadata (`CheckpointMeta.extra["uncertainty"]`):

- `std_scale` k: the model's own std is multiplied by k so that a frame's Gaussian (mean, k*s)
  means what it says (68% of errors inside 1 std). The raw head is trained for accuracy, not for
  honest spread, and comes out too wide or too narrow; one scalar fixes most of it.
- `floor_years`: the part of the error that does not average out over one person's images (they
  look older or younger than they are in every photo, or the model is biased at their age). Fusion
  may shrink only the independent part of the error with more frames; the floor stays. Without it
  a belief fed enough frames would claim any certainty, and a 16-year-old who looks 21 would
  eventually be allowed into adult content.

Pure numpy/torch: imported by the engine, the trainer and benchmarks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

# The floor used when it cannot be measured (no subject with several images, e.g. UTKFace and
# APPA-REAL, whose loaders make each image its own subject; or too few such subjects), and for
# checkpoints trained before calibration existed. Why 3.0 years, and why "conservative":
# - it is 1.5x the synthetic generator's persistent per-person offset (sd 2.0 years), the only
#   population whose truth we know, so a synthetic-trained model is never credited with less
#   persistent error than its data has;
# - on real photographs the spread of apparent age around real age between people is of the order
#   of several years and dominates the per-photo noise; a model cannot be better than the look of
#   the face, so a floor well above the synthetic one is the safer side;
# - operationally it bounds what any amount of evidence can prove: with a 3-year floor,
#   P(age >= 18) >= 0.95 needs a fused mean of at least 18 + 1.645 * 3 = 22.9 years, in line with
#   the "challenge 21/25" buffers retail age checks use. A smaller default would let a look-older
#   minor through on enough uploads; a larger one would send most young adults to verification.
# Never 0: a zero floor is exactly the independent-frames assumption this module exists to remove.
DEFAULT_ERROR_FLOOR_YEARS = 3.0
# Smallest floor an estimate may return: the method-of-moments difference can come out <= 0 by
# sampling noise when the persistent part is small; "no persistent error at all" is never credible.
MIN_ERROR_FLOOR_YEARS = 0.25
# Fewer subjects with several images than this and the floor is too noisy to trust (its relative
# standard error is roughly sqrt(2/n) on the variance): use the default instead.
MIN_FLOOR_SUBJECTS = 20

_Num = TypeVar("_Num", float, torch.Tensor)


@dataclass(frozen=True, slots=True)
class UncertaintyCalibration:
    """What the engine applies to every frame's std, and the floor fusion must keep."""

    std_scale: float = 1.0  # calibrated std = std_scale * model std (1.0 = uncalibrated)
    floor_years: float = DEFAULT_ERROR_FLOOR_YEARS  # sd of the error that does not average out per person
    floor_subjects: int = 0  # subjects the floor was estimated from; 0 = the default was used
    floor_source: str = "default: not estimated"  # "estimated" or "default: <why>"
    fitted_on: int = 0  # frames the scale was fitted on (0 = not fitted)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.std_scale) and self.std_scale > 0):
            raise ValueError(f"std_scale must be a positive finite number, got {self.std_scale!r}")
        if not (math.isfinite(self.floor_years) and self.floor_years > 0):
            raise ValueError(f"floor_years must be a positive finite number, got {self.floor_years!r}")

    def apply(self, std: _Num) -> _Num:
        """The calibrated std (same type as given: float or tensor)."""
        if self.std_scale == 1.0:
            return std
        return std * self.std_scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "std_scale": self.std_scale,
            "floor_years": self.floor_years,
            "floor_subjects": self.floor_subjects,
            "floor_source": self.floor_source,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> UncertaintyCalibration:
        return cls(
            std_scale=float(raw.get("std_scale", 1.0)),
            floor_years=float(raw.get("floor_years", DEFAULT_ERROR_FLOOR_YEARS)),
            floor_subjects=int(raw.get("floor_subjects", 0)),
            floor_source=str(raw.get("floor_source", "default: not recorded")),
            fitted_on=int(raw.get("fitted_on", 0)),
        )

    @classmethod
    def from_meta(cls, meta: Any) -> UncertaintyCalibration:
        """From a CheckpointMeta (or None). A checkpoint without calibration still loads, with a warning:
        scale 1 (its raw std) and the default floor."""
        raw = (getattr(meta, "extra", None) or {}).get("uncertainty") if meta is not None else None
        if raw is None:
            version = getattr(getattr(meta, "config", None), "model_version", "?")
            log.warning(
                "checkpoint %s has no uncertainty calibration (trained before it existed): using its raw std "
                "(scale 1.0) and the default error floor of %.1f years",
                version,
                DEFAULT_ERROR_FLOOR_YEARS,
            )
            return cls(floor_source="default: checkpoint has no calibration")
        return cls.from_dict(raw)


def _finite_pair(errors: ArrayLike, stds: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    s = np.asarray(stds, dtype=np.float64).reshape(-1)
    if e.shape != s.shape:
        raise ValueError(f"errors and stds differ in length: {e.size} vs {s.size}")
    keep = np.isfinite(e) & np.isfinite(s) & (s > 0)
    return e[keep], s[keep]


def fit_std_scale(errors: ArrayLike, stds: ArrayLike) -> float:
    """The variance scale k with k^2 = mean((e/s)^2): the maximum-likelihood scale of N(0, (k s)^2).

    `errors` are estimate - true age on the VALIDATION split (fitting on test would grade the model
    on what it was tuned on). Returns 1.0 when there is nothing to fit.
    """
    e, s = _finite_pair(errors, stds)
    if not e.size:
        return 1.0
    k = math.sqrt(float(np.mean((e / s) ** 2)))
    return k if math.isfinite(k) and k > 0 else 1.0


@dataclass(frozen=True, slots=True)
class FloorEstimate:
    floor_years: float
    subjects: int  # subjects with >= 2 images that it came from (0 = default)
    source: str  # "estimated" or "default: <why>"
    within_sd: float  # pooled within-subject sd of the error (nan when not estimated)


def estimate_error_floor(
    errors: ArrayLike, subject_ids: Sequence[Hashable], *, min_subjects: int = MIN_FLOOR_SUBJECTS
) -> FloorEstimate:
    """The sd of the error that does not average out over one person's images.

    One-way random-effects method of moments on the errors e_ij (image j of subject i), using only
    subjects with k_i >= 2 images:
      within variance  s_w^2 = sum_ij (e_ij - ebar_i)^2 / sum_i (k_i - 1)   (pooled around subject means)
      floor^2          = mean_i(ebar_i^2) - s_w^2 * mean_i(1 / k_i)
    E[ebar_i^2] = b^2 + mu^2 + s_w^2 / k_i when e_ij = mu + u_i + w_ij with u_i ~ (0, b^2), so the floor
    is the root second moment of the persistent part: a systematic bias mu counts as persistent error
    (it does not average out either). The result is clipped at MIN_ERROR_FLOOR_YEARS.

    With fewer than `min_subjects` such subjects (real-data loaders give each image its own subject)
    the floor cannot be measured: returns DEFAULT_ERROR_FLOOR_YEARS with the reason, and warns.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if len(subject_ids) != e.size:
        raise ValueError(f"errors and subject_ids differ in length: {e.size} vs {len(subject_ids)}")
    groups: dict[Hashable, list[float]] = {}
    for sid, err in zip(subject_ids, e.tolist(), strict=True):
        if math.isfinite(err):
            groups.setdefault(sid, []).append(err)
    multi = [np.asarray(v) for v in groups.values() if len(v) >= 2]
    if not multi:
        return _default_floor("no subject with several images")
    if len(multi) < min_subjects:
        return _default_floor(f"only {len(multi)} subjects with several images (need {min_subjects})")
    k = np.array([g.size for g in multi], dtype=np.float64)
    means = np.array([g.mean() for g in multi])
    within_ss = sum(float(((g - g.mean()) ** 2).sum()) for g in multi)
    within_var = within_ss / float((k - 1).sum())
    floor_sq = float(np.mean(means**2)) - within_var * float(np.mean(1.0 / k))
    floor = max(math.sqrt(max(floor_sq, 0.0)), MIN_ERROR_FLOOR_YEARS)
    return FloorEstimate(floor, len(multi), "estimated", math.sqrt(within_var))


def _default_floor(why: str) -> FloorEstimate:
    log.warning("error floor cannot be estimated (%s): using the default %.1f years", why, DEFAULT_ERROR_FLOOR_YEARS)
    return FloorEstimate(DEFAULT_ERROR_FLOOR_YEARS, 0, f"default: {why}", math.nan)


def fit_calibration(
    errors: ArrayLike, stds: ArrayLike, subject_ids: Sequence[Hashable], *, min_subjects: int = MIN_FLOOR_SUBJECTS
) -> UncertaintyCalibration:
    """Scale and floor from one split's errors (estimate - true age), model stds and subject ids."""
    e, _ = _finite_pair(errors, stds)
    floor = estimate_error_floor(errors, subject_ids, min_subjects=min_subjects)
    return UncertaintyCalibration(
        std_scale=fit_std_scale(errors, stds),
        floor_years=floor.floor_years,
        floor_subjects=floor.subjects,
        floor_source=floor.source,
        fitted_on=int(e.size),
    )
