"""Calibrated per-frame uncertainty and the per-model error floor.

Fitted after training on the calibration data (the validation split, or a separate manifest given
with `agegate train --calibration-data`) and stored in the checkpoint metadata
(`CheckpointMeta.extra["uncertainty"]`), in this order (each on the errors the previous one leaves):

- optionally (`--mean-map`; off by default, measured not clearly better: docs/evaluation.md) a mean
  recalibration: a monotone piecewise-linear map from the model's predicted age to
  E[true age | predicted age] (isotonic regression on block means, as knots). A regressor is pulled
  toward the mean at both ends of the age range, so it over-estimates teenagers (the dangerous
  direction for an age gate) and under-estimates older adults; that bias is the same in every photo
  of a person, so fusing frames cannot remove it and it would otherwise inflate the floor below. The
  map is clamped to the range it was fitted on (no extrapolation) and is the identity when absent;
- `std_scale` k: the model's own std is multiplied by k so that a frame's Gaussian (mean, k*s)
  means what it says (68% of errors inside 1 std). The raw head is trained for accuracy, not for
  honest spread, and comes out too wide or too narrow; one scalar fixes most of it.
- `floor_years`: the part of the error that does not average out over one person's images (they
  look older or younger than they are in every photo, or the model is biased at their age). Fusion
  may shrink only the independent part of the error with more frames; the floor stays. Without it
  a belief fed enough frames would claim any certainty, and a 16-year-old who looks 21 would
  eventually be allowed into adult content.
- `floor_ratio` rho (`estimate_floor_ratio`): the same persistent error, as a share of each frame's
  calibrated variance rather than in years: a frame with std s has the floor sqrt(rho) * s. The
  model's std already knows which faces it is unsure of (a child's face against one of 24, where
  there is no age cue); its persistent error grows with it. One scalar floor measured over everyone
  is too wide for the faces the model knows and too narrow for those it does not: pooled over a
  population the belief's 50% interval held 60% and its 95% interval 93% (docs/evaluation.md). This
  is what fusion uses when fitted (stream/core/belief.py ErrorFloor); 0 (not fitted, or a checkpoint
  from before ratios) keeps the scalar floor for every frame.
- the floor's shape: how that persistent error is spread over people, as a two-component scale
  mixture with the floor as its second moment (`fit_floor_shape`; stream/core/belief.py FloorShape
  turns it into P(age >= T)). Gaussian unless the data clearly say otherwise.
- the floor by predicted age (`fit_floor_table`): the same estimate as the floor, per band of
  predicted age, as knots and values; the scalar floor stays (overall, and what fusion uses).
  stream/core/belief.py FloorByAge lets `decide` judge with it; the worker does not pass it
  (measured not good enough: docs/evaluation.md).

Checkpoints calibrated before a part existed load without it: identity map, Gaussian shape, no
floor table (the scalar floor at every age).
Pure numpy/torch: imported by the engine, the trainer and benchmarks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
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
    # Mean recalibration knots (see `fit_mean_map`): strictly increasing predicted ages and the
    # non-decreasing true ages they map to. Empty = identity (not fitted).
    mean_knots_pred: tuple[float, ...] = ()
    mean_knots_true: tuple[float, ...] = ()
    # The floor's shape (see `fit_floor_shape`): a share `floor_shape_weight` of people has persistent
    # error sd `floor_shape_narrow * floor`, the rest a wider one fixed by the second moment. Weight 1 =
    # the plain Gaussian (not fitted, no evidence against it, or a checkpoint from before shapes).
    floor_shape_weight: float = 1.0
    floor_shape_narrow: float = 1.0
    floor_shape_subjects: int = 0
    floor_shape_source: str = "default: not fitted"
    # The floor by predicted age (see `fit_floor_table`): band centres (strictly increasing predicted
    # ages), the band floors and the subjects each came from. Empty = no table: `floor_years` at every
    # age (not fitted, too few subjects, or a checkpoint from before tables).
    floor_table_knots: tuple[float, ...] = ()
    floor_table_values: tuple[float, ...] = ()
    floor_table_subjects: tuple[int, ...] = ()
    floor_table_source: str = "default: not fitted"
    # The floor as a share of each frame's calibrated variance (see `estimate_floor_ratio`): 0 = the
    # scalar `floor_years` for every frame (not fitted, or a checkpoint from before ratios).
    floor_ratio: float = 0.0
    floor_ratio_subjects: int = 0
    floor_ratio_source: str = "default: not fitted"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.std_scale) and self.std_scale > 0):
            raise ValueError(f"std_scale must be a positive finite number, got {self.std_scale!r}")
        if not (math.isfinite(self.floor_years) and self.floor_years > 0):
            raise ValueError(f"floor_years must be a positive finite number, got {self.floor_years!r}")
        if not (0.0 < self.floor_shape_weight <= 1.0 and 0.0 < self.floor_shape_narrow <= 1.0):
            raise ValueError(
                f"floor shape needs 0 < weight <= 1 and 0 < narrow <= 1, got "
                f"{self.floor_shape_weight!r}, {self.floor_shape_narrow!r}"
            )
        xp, fp = np.asarray(self.mean_knots_pred, dtype=np.float64), np.asarray(self.mean_knots_true, dtype=np.float64)
        if xp.shape != fp.shape:
            raise ValueError(f"mean knots differ in length: {xp.size} predicted vs {fp.size} true")
        if xp.size == 1:
            raise ValueError("a mean map needs at least two knots (or none)")
        if not (np.isfinite(xp).all() and np.isfinite(fp).all()):
            raise ValueError("mean knots must be finite")
        if xp.size and not (np.all(np.diff(xp) > 0) and np.all(np.diff(fp) >= 0)):
            raise ValueError("mean knots must be strictly increasing in predicted age and non-decreasing in true age")
        _check_table(self.floor_table_knots, self.floor_table_values, self.floor_table_subjects)
        if not (math.isfinite(self.floor_ratio) and 0.0 <= self.floor_ratio <= MAX_FLOOR_RATIO):
            raise ValueError(f"floor_ratio must be in [0, {MAX_FLOOR_RATIO}], got {self.floor_ratio!r}")

    @property
    def floor_table(self) -> FloorTable:
        """The floor by predicted age (empty: the scalar floor everywhere)."""
        return FloorTable(
            self.floor_table_knots, self.floor_table_values, self.floor_table_subjects, self.floor_table_source
        )

    def floor_at(self, predicted_age: float) -> float:
        """The floor the table gives at this predicted age; `floor_years` without a table."""
        return self.floor_table.at(predicted_age) if self.floor_table_knots else self.floor_years

    @property
    def floor_shape_wide(self) -> float:
        """The wide component's sd ratio: weight * narrow^2 + (1 - weight) * wide^2 = 1."""
        return _wide_ratio(self.floor_shape_weight, self.floor_shape_narrow)

    @property
    def has_mean_map(self) -> bool:
        return bool(self.mean_knots_pred)

    def apply_mean(self, mean: _Num) -> _Num:
        """The recalibrated mean (same type as given: float or CPU tensor); identity without a map.

        Linear between knots, clamped to the end knots outside them (np.interp semantics)."""
        if not self.mean_knots_pred:
            return mean
        if isinstance(mean, torch.Tensor):
            mapped = np.interp(
                mean.detach().cpu().numpy().astype(np.float64), self.mean_knots_pred, self.mean_knots_true
            )
            return torch.from_numpy(mapped).to(dtype=mean.dtype, device=mean.device)
        return float(np.interp(float(mean), self.mean_knots_pred, self.mean_knots_true))

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
            "mean_knots_pred": list(self.mean_knots_pred),
            "mean_knots_true": list(self.mean_knots_true),
            "floor_shape": {
                "weight": self.floor_shape_weight,
                "narrow": self.floor_shape_narrow,
                "wide": self.floor_shape_wide,
                "subjects": self.floor_shape_subjects,
                "source": self.floor_shape_source,
            },
            "floor_table": {
                "knots": list(self.floor_table_knots),
                "values": list(self.floor_table_values),
                "subjects": list(self.floor_table_subjects),
                "source": self.floor_table_source,
            },
            "floor_ratio": {
                "ratio": self.floor_ratio,
                "subjects": self.floor_ratio_subjects,
                "source": self.floor_ratio_source,
            },
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> UncertaintyCalibration:
        """Checkpoints calibrated before a key existed load with its neutral value: no mean map
        (identity), a Gaussian floor shape, no floor table and no floor ratio (the scalar floor for
        every frame at every age)."""
        shape = raw.get("floor_shape") or {}
        table = raw.get("floor_table") or {}
        ratio = raw.get("floor_ratio") or {}
        return cls(
            std_scale=float(raw.get("std_scale", 1.0)),
            floor_years=float(raw.get("floor_years", DEFAULT_ERROR_FLOOR_YEARS)),
            floor_subjects=int(raw.get("floor_subjects", 0)),
            floor_source=str(raw.get("floor_source", "default: not recorded")),
            fitted_on=int(raw.get("fitted_on", 0)),
            mean_knots_pred=tuple(float(v) for v in raw.get("mean_knots_pred", ())),
            mean_knots_true=tuple(float(v) for v in raw.get("mean_knots_true", ())),
            floor_shape_weight=float(shape.get("weight", 1.0)),
            floor_shape_narrow=float(shape.get("narrow", 1.0)),
            floor_shape_subjects=int(shape.get("subjects", 0)),
            floor_shape_source=str(shape.get("source", "default: not recorded (Gaussian)")),
            floor_table_knots=tuple(float(v) for v in table.get("knots", ())),
            floor_table_values=tuple(float(v) for v in table.get("values", ())),
            floor_table_subjects=tuple(int(v) for v in table.get("subjects", ())),
            floor_table_source=str(table.get("source", "default: not recorded (scalar floor)")),
            floor_ratio=float(ratio.get("ratio", 0.0)),
            floor_ratio_subjects=int(ratio.get("subjects", 0)),
            floor_ratio_source=str(ratio.get("source", "default: not recorded (scalar floor)")),
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


def _check_table(knots: Sequence[float], values: Sequence[float], subjects: Sequence[int]) -> None:
    if not (len(knots) == len(values) == len(subjects)):
        raise ValueError(f"floor table parts differ in length: {len(knots)}, {len(values)}, {len(subjects)}")
    if len(knots) == 1:
        raise ValueError("a floor table needs at least two knots (or none)")
    if not all(math.isfinite(k) for k in knots) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError("floor table knots must be finite and its values positive and finite")
    if any(b <= a for a, b in pairwise(knots)):
        raise ValueError("floor table knots must be strictly increasing")


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


# The persistent share of a frame's variance is at most this: a quarter always counts as independent
# (stream/core/belief.py MIN_INDEPENDENT_VARIANCE_SHARE), so the estimate is clipped here.
MAX_FLOOR_RATIO = 0.75


@dataclass(frozen=True, slots=True)
class FloorRatio:
    ratio: float  # 0 = not estimated: the scalar floor applies
    subjects: int
    source: str


def estimate_floor_ratio(
    errors: ArrayLike, stds: ArrayLike, subject_ids: Sequence[Hashable], *, min_subjects: int = MIN_FLOOR_SUBJECTS
) -> FloorRatio:
    """The share rho of a frame's calibrated variance that does not average out over one person.

    The errors standardised by the calibrated std, z = e / s, go through the same one-way
    random-effects method of moments as `estimate_error_floor` (subjects with several images), scaled
    to a unit second moment, so rho is floor_z^2: the persistent share of the whole. A frame with std s then
    has the floor sqrt(rho) * s: the model's own uncertainty says which faces carry a large persistent
    error. rho is scale-free (the std scale cancels) and clipped to MAX_FLOOR_RATIO. Not estimable
    (too few subjects with several images): 0, meaning the scalar floor (itself the conservative
    default then) applies to every frame.
    """
    z, ids = standardised_errors(errors, stds, subject_ids)
    if not z.size or not np.any(z):
        return FloorRatio(0.0, 0, "default: no errors to measure: scalar floor")
    fz = estimate_error_floor(z, ids, min_subjects=min_subjects)
    if not fz.subjects:
        return FloorRatio(0.0, 0, f"{fz.source}: scalar floor")
    ratio = min(fz.floor_years**2, MAX_FLOOR_RATIO)
    return FloorRatio(ratio, fz.subjects, "estimated")


def standardised_errors(
    errors: ArrayLike, stds: ArrayLike, subject_ids: Sequence[Hashable]
) -> tuple[np.ndarray, list[Hashable]]:
    """The errors in units of each frame's std, scaled to a unit second moment, with their subject ids.

    The units the floor ratio lives in: there a frame's persistent error is sqrt(rho) (the ratio's
    floor), whatever the frame's std. Frames without a finite error and a positive std are dropped.
    """
    e, s = np.asarray(errors, dtype=np.float64).reshape(-1), np.asarray(stds, dtype=np.float64).reshape(-1)
    if e.shape != s.shape or len(subject_ids) != e.size:
        raise ValueError(f"errors, stds and subject_ids differ in length: {e.size}, {s.size}, {len(subject_ids)}")
    keep = np.isfinite(e) & np.isfinite(s) & (s > 0)
    z = e[keep] / s[keep]
    if z.size and np.any(z):
        z = z / math.sqrt(float(np.mean(z**2)))  # unit second moment: the floor of z is then sqrt(rho)
    return z, [sid for sid, k in zip(subject_ids, keep.tolist(), strict=True) if k]


def _default_floor(why: str) -> FloorEstimate:
    log.warning("error floor cannot be estimated (%s): using the default %.1f years", why, DEFAULT_ERROR_FLOOR_YEARS)
    return FloorEstimate(DEFAULT_ERROR_FLOOR_YEARS, 0, f"default: {why}", math.nan)


# Frames per isotonic block before its mean becomes a knot: fewer and one block's noise is a knot.
MIN_FRAMES_PER_KNOT = 40
# Fewer val frames than this (two blocks) and no mean map is fitted: the identity is safer than noise.
MIN_MEAN_MAP_FRAMES = 2 * MIN_FRAMES_PER_KNOT


def _pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted isotonic (non-decreasing) fit of block values y: merged block values, weights, sizes.

    A few dozen blocks at most, so the plain stack form is enough (numpy only: model/ must not need
    scikit-learn)."""
    vals: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        weights.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, n2 = vals.pop(), weights.pop(), sizes.pop()
            v1, w1, n1 = vals.pop(), weights.pop(), sizes.pop()
            vals.append((v1 * w1 + v2 * w2) / (w1 + w2))
            weights.append(w1 + w2)
            sizes.append(n1 + n2)
    return np.asarray(vals), np.asarray(weights), np.asarray(sizes)


def fit_mean_map(
    predicted: ArrayLike, true_ages: ArrayLike, *, min_per_knot: int = MIN_FRAMES_PER_KNOT
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots of a monotone piecewise-linear estimate of E[true age | predicted age].

    The frames, sorted by predicted age, are cut into equal-count blocks of at least `min_per_knot`
    frames; the blocks' mean true ages are made non-decreasing by weighted pool-adjacent-violators
    (isotonic regression on block means), and each pooled block gives one knot (mean predicted age,
    mean true age). Blocks rather than single frames keep each knot a mean of many frames, so the map
    follows the model's bias by age, not the noise of one validation split. Returns ((), ()) (the
    identity) when there are too few frames or fewer than two distinct knots.
    """
    x = np.asarray(predicted, dtype=np.float64).reshape(-1)
    t = np.asarray(true_ages, dtype=np.float64).reshape(-1)
    if x.shape != t.shape:
        raise ValueError(f"predicted and true ages differ in length: {x.size} vs {t.size}")
    keep = np.isfinite(x) & np.isfinite(t)
    x, t = x[keep], t[keep]
    if x.size < max(MIN_MEAN_MAP_FRAMES, 2 * min_per_knot):
        return (), ()
    order = np.argsort(x, kind="stable")
    x, t = x[order], t[order]
    blocks = np.array_split(np.arange(x.size), x.size // min_per_knot)
    bx = np.array([x[b].mean() for b in blocks])
    bt = np.array([t[b].mean() for b in blocks])
    bw = np.array([float(b.size) for b in blocks])
    knots_t, _, sizes = _pool_adjacent_violators(bt, bw)
    ends = np.cumsum(sizes)
    knots_x = np.array([np.average(bx[e - n : e], weights=bw[e - n : e]) for e, n in zip(ends, sizes, strict=True)])
    # Ties in predicted age (a constant model) would break np.interp: keep strictly increasing knots.
    strict = np.concatenate([[True], np.diff(knots_x) > 0])
    knots_x, knots_t = knots_x[strict], knots_t[strict]
    if knots_x.size < 2:
        return (), ()
    return tuple(float(v) for v in knots_x), tuple(float(v) for v in knots_t)


def _wide_ratio(weight: float, narrow: float) -> float:
    if weight >= 1.0:
        return 1.0
    return math.sqrt((1.0 - weight * narrow * narrow) / (1.0 - weight))


# Fewer subjects with several images than this and the floor's shape is not fitted (Gaussian): a tail
# is a statement about the few people the model is far off for, so it needs many people to see them.
MIN_SHAPE_SUBJECTS = 100
# The widest component allowed, as a multiple of the floor: a handful of outliers must not make one
# subject in a hundred "20 years off" and the narrow part implausibly certain.
MAX_WIDE_RATIO = 4.0
# The mixture replaces the Gaussian only when it is clearly better: twice the log-likelihood gain must
# exceed this (the 99% point of chi-square with 2 degrees of freedom, the two shape parameters).
SHAPE_LR_THRESHOLD = 9.21
_WEIGHT_GRID = np.round(np.arange(0.30, 0.991, 0.01), 2)
_NARROW_GRID = np.round(np.arange(0.20, 1.0001, 0.01), 2)


@dataclass(frozen=True, slots=True)
class FloorShapeFit:
    weight: float  # share of the narrow component (1.0 = Gaussian)
    narrow: float  # its sd / floor
    wide: float  # the other component's sd / floor
    subjects: int  # subjects it was fitted on (0 = not fitted)
    source: str  # "fitted", "gaussian: <why>" or "default: <why>"


def fit_floor_shape(
    errors: ArrayLike,
    subject_ids: Sequence[Hashable],
    floor_years: float,
    within_sd: float,
    *,
    min_subjects: int = MIN_SHAPE_SUBJECTS,
) -> FloorShapeFit:
    """The shape of the persistent error: a two-component scale mixture with second moment floor^2.

    Each subject i with k_i >= 2 images has a mean error ebar_i = u_i + (mean of k_i independent
    errors); given the component, ebar_i ~ N(0, (r floor)^2 + within_sd^2 / k_i). The weight w and the
    narrow ratio r1 maximise the likelihood of the subject means over a grid (w in [0.30, 0.99], r1 in
    [0.20, 1.00], the wide ratio r2 following from w r1^2 + (1 - w) r2^2 = 1 and capped at
    MAX_WIDE_RATIO); the floor is kept as estimated, so it keeps its meaning. The Gaussian (w = 1) is
    kept unless the mixture is clearly better (likelihood-ratio statistic > SHAPE_LR_THRESHOLD), or
    when fewer than `min_subjects` subjects have several images.

    Why per-subject means: the belief after many uploads is one person's mean estimate, so the shape
    that matters is that of the per-person error, not of single frames (those add the Gaussian
    independent part, which the mixture keeps separate).
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if len(subject_ids) != e.size:
        raise ValueError(f"errors and subject_ids differ in length: {e.size} vs {len(subject_ids)}")
    groups: dict[Hashable, list[float]] = {}
    for sid, err in zip(subject_ids, e.tolist(), strict=True):
        if math.isfinite(err):
            groups.setdefault(sid, []).append(err)
    multi = [v for v in groups.values() if len(v) >= 2]
    if len(multi) < min_subjects or not (math.isfinite(within_sd) and math.isfinite(floor_years)):
        return FloorShapeFit(
            1.0, 1.0, 1.0, 0, f"default: {len(multi)} subjects with several images (need {min_subjects}); Gaussian"
        )
    means = np.array([sum(v) / len(v) for v in multi])
    noise_var = within_sd**2 / np.array([float(len(v)) for v in multi])
    w = _WEIGHT_GRID[:, None]
    r1 = _NARROW_GRID[None, :]
    r2 = np.sqrt((1.0 - w * r1**2) / (1.0 - w))
    ok = r2 <= MAX_WIDE_RATIO

    def loglik(var: np.ndarray) -> np.ndarray:  # log N(means; 0, var), summed over subjects (last axis)
        return np.asarray(-0.5 * (np.log(2 * math.pi * var) + means**2 / var))

    f2 = floor_years**2
    v1 = (r1**2)[..., None] * f2 + noise_var  # (1, R, S)
    v2 = (r2**2)[..., None] * f2 + noise_var  # (W, R, S)
    l1, l2 = loglik(v1) + np.log(w)[..., None], loglik(v2) + np.log1p(-w)[..., None]
    total = np.logaddexp(l1, l2).sum(axis=-1)
    total = np.where(ok, total, -np.inf)
    gaussian = float(loglik(f2 + noise_var).sum())
    i, j = np.unravel_index(int(np.argmax(total)), total.shape)
    gain = 2.0 * (float(total[i, j]) - gaussian)
    if not gain > SHAPE_LR_THRESHOLD:
        return FloorShapeFit(1.0, 1.0, 1.0, len(multi), f"gaussian: mixture not clearly better (2 dlogL {gain:.1f})")
    weight, narrow = float(_WEIGHT_GRID[i]), float(_NARROW_GRID[j])
    return FloorShapeFit(weight, narrow, _wide_ratio(weight, narrow), len(multi), "fitted")


# A band of the floor table needs at least this many subjects with several images: the band's floor is
# a variance estimated from them (relative standard error ~ sqrt(2/n): 0.14 at 100), and a band of a
# few dozen people would make a knot out of whoever happened to be in it.
MIN_BAND_SUBJECTS = 100
# At most this many bands however much data there is: the table is for the coarse shape of the error
# by age (small for children, large where the faces carry no age cue), not for its noise.
MAX_FLOOR_BANDS = 12


@dataclass(frozen=True, slots=True)
class FloorTable:
    """The error floor as a function of predicted age: knots (band centres) and the band floors.

    Evaluated by linear interpolation between knots, clamped to the end values outside them
    (np.interp semantics). Empty = no table (the scalar floor everywhere)."""

    knots: tuple[float, ...] = ()  # mean predicted age of each band's subjects, strictly increasing
    values: tuple[float, ...] = ()  # the band's floor (years), >= MIN_ERROR_FLOOR_YEARS
    subjects: tuple[int, ...] = ()  # subjects with >= 2 images in each band
    source: str = "default: not fitted"

    def __post_init__(self) -> None:
        _check_table(self.knots, self.values, self.subjects)

    def __bool__(self) -> bool:
        return bool(self.knots)

    def at(self, predicted_age: float) -> float:
        """The band floor at this predicted age (callers handle the empty table)."""
        return float(np.interp(float(predicted_age), self.knots, self.values))


NO_FLOOR_TABLE = FloorTable()


def fit_floor_table(
    errors: ArrayLike,
    subject_ids: Sequence[Hashable],
    means: ArrayLike,
    *,
    min_band_subjects: int = MIN_BAND_SUBJECTS,
    max_bands: int = MAX_FLOOR_BANDS,
) -> FloorTable:
    """The floor by predicted age: `estimate_error_floor` (the same method of moments) per band.

    Subjects with k_i >= 2 images are sorted by their mean predicted age (the engine's output, i.e.
    after the mean map if there is one) and cut into equal-count bands of at least
    `min_band_subjects` subjects (at most `max_bands` bands; fewer subjects than two bands and there
    is no table). In each band the floor is the one-way random-effects estimate of
    `estimate_error_floor` on that band's subjects only (its own within-subject variance, its own
    between-subject second moment), clipped at MIN_ERROR_FLOOR_YEARS; the knot is the band's mean
    predicted age. Why by predicted age: it is what is known at decision time (the belief's mean),
    and the person-level error depends on it (small for children, large where the faces carry little
    age cue), so one scalar over-covers some ages and under-covers others.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    m = np.asarray(means, dtype=np.float64).reshape(-1)
    if len(subject_ids) != e.size or m.size != e.size:
        raise ValueError(f"errors, means and subject_ids differ in length: {e.size}, {m.size}, {len(subject_ids)}")
    groups: dict[Hashable, list[int]] = {}
    for i, sid in enumerate(subject_ids):
        if math.isfinite(e[i]) and math.isfinite(m[i]):
            groups.setdefault(sid, []).append(i)
    multi = [np.asarray(ix) for ix in groups.values() if len(ix) >= 2]
    n_bands = min(max_bands, len(multi) // max(min_band_subjects, 1))
    if n_bands < 2:
        return FloorTable(source=f"default: {len(multi)} subjects with several images (need {2 * min_band_subjects})")
    centre = np.array([m[ix].mean() for ix in multi])
    order = np.argsort(centre, kind="stable")
    knots: list[float] = []
    values: list[float] = []
    counts: list[int] = []
    for band in np.array_split(order, n_bands):
        ix = np.concatenate([multi[j] for j in band])
        sids = [j for j in band for _ in range(multi[j].size)]
        est = estimate_error_floor(e[ix], sids, min_subjects=2)
        knots.append(float(centre[band].mean()))
        values.append(est.floor_years)
        counts.append(int(band.size))
    if not all(b > a for a, b in pairwise(knots)):  # ties: a constant model
        return FloorTable(source="default: bands of predicted age do not separate")
    return FloorTable(tuple(knots), tuple(values), tuple(counts), "estimated")


def _shape_in_fusion_units(
    errors: ArrayLike,
    stds: ArrayLike,
    subject_ids: Sequence[Hashable],
    floor: FloorEstimate,
    ratio: FloorRatio,
    min_subjects: int,
) -> FloorShapeFit:
    """The floor's shape, fitted in the units of the floor that fusion uses.

    A shape multiplies the belief's floor. With a floor ratio that floor is each person's own
    (sqrt(rho) x their frames' std), so the shape must describe the persistent error relative to it:
    it is fitted on the standardised errors, whose floor is sqrt(rho). Fitted in years instead, it
    would count twice the spread between people the ratio already gives them (measured on the demo
    model: a strong mixture in years, none left in standardised units, and the years-fitted shape on
    top of the ratio under-covered the belief's 50% interval by 3.7 points, docs/evaluation.md).
    Without a ratio the floor is the scalar in years, and so is the fit.
    """
    if not floor.subjects:
        return FloorShapeFit(1.0, 1.0, 1.0, 0, "default: the floor itself is the default; Gaussian")
    if ratio.ratio <= 0.0:
        return fit_floor_shape(errors, subject_ids, floor.floor_years, floor.within_sd, min_subjects=min_subjects)
    z, ids = standardised_errors(errors, stds, subject_ids)
    fz = estimate_error_floor(z, ids, min_subjects=1)  # the ratio before its clip: the data's own floor
    fit = fit_floor_shape(z, ids, fz.floor_years, fz.within_sd, min_subjects=min_subjects)
    return dataclasses.replace(fit, source=f"{fit.source} (relative to the ratio floor)")


def fit_calibration(
    errors: ArrayLike,
    stds: ArrayLike,
    subject_ids: Sequence[Hashable],
    *,
    means: ArrayLike | None = None,
    predicted: ArrayLike | None = None,
    min_subjects: int = MIN_FLOOR_SUBJECTS,
    shape_subjects: int = MIN_SHAPE_SUBJECTS,
    band_subjects: int = MIN_BAND_SUBJECTS,
) -> UncertaintyCalibration:
    """Mean map, scale and floor from one split's errors (estimate - true age), model stds and subject ids.

    With `means` (the model's predicted ages) the mean map is fitted first and the scale and the floor
    are fitted on the errors it leaves (corrected estimate - true age): the floor is then the
    persistent error the engine's output still has, not the bias the map removes. Without `means`
    there is no map (the identity) and the errors are used as given.

    The floor table (`fit_floor_table`) needs the predicted ages: `means`, or `predicted` when no
    mean map is wanted (the same array: the model's predicted ages); it is fitted on the engine's
    output ages (after the map) and the errors the map leaves. Neither given, or the scalar floor
    itself the default, and there is no table.
    """
    e, _ = _finite_pair(errors, stds)
    knots_pred: tuple[float, ...] = ()
    knots_true: tuple[float, ...] = ()
    given = means if means is not None else predicted
    table_ages = None if given is None else np.asarray(given, dtype=np.float64).reshape(-1)
    if means is not None:
        m = np.asarray(means, dtype=np.float64).reshape(-1)
        raw_err = np.asarray(errors, dtype=np.float64).reshape(-1)
        if m.shape != raw_err.shape:
            raise ValueError(f"means and errors differ in length: {m.size} vs {raw_err.size}")
        true_ages = m - raw_err
        knots_pred, knots_true = fit_mean_map(m, true_ages)
        if knots_pred:
            table_ages = np.interp(m, knots_pred, knots_true)
            errors = table_ages - true_ages
    floor = estimate_error_floor(errors, subject_ids, min_subjects=min_subjects)
    ratio = (
        estimate_floor_ratio(errors, stds, subject_ids, min_subjects=min_subjects)
        if floor.subjects
        else FloorRatio(0.0, 0, "default: the floor itself is the default")
    )
    shape = _shape_in_fusion_units(errors, stds, subject_ids, floor, ratio, shape_subjects)
    if not floor.subjects:
        table = FloorTable(source="default: the floor itself is the default")
    elif table_ages is None:
        table = FloorTable(source="default: no predicted ages given")
    else:
        table = fit_floor_table(errors, subject_ids, table_ages, min_band_subjects=band_subjects)
    return UncertaintyCalibration(
        std_scale=fit_std_scale(errors, stds),
        floor_years=floor.floor_years,
        floor_subjects=floor.subjects,
        floor_source=floor.source,
        fitted_on=int(e.size),
        mean_knots_pred=knots_pred,
        mean_knots_true=knots_true,
        floor_shape_weight=shape.weight,
        floor_shape_narrow=shape.narrow,
        floor_shape_subjects=shape.subjects,
        floor_shape_source=shape.source,
        floor_table_knots=table.knots,
        floor_table_values=table.values,
        floor_table_subjects=table.subjects,
        floor_table_source=table.source,
        floor_ratio=ratio.ratio,
        floor_ratio_subjects=ratio.subjects,
        floor_ratio_source=ratio.source,
    )
