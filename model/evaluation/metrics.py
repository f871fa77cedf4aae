"""Accuracy and threshold metrics on arrays of true ages and predicted ages.

Every function takes plain arrays and returns plain floats (NaN when undefined, e.g. an empty group),
so a caller can slice by any group and the JSON writer turns NaN into null. Rates are fractions in
[0, 1]; errors are in years, signed as predicted minus true (positive = overestimate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Legacy bucket boundaries (<13, 13-15, 16-17, 18-24, 25+): P(age >= T) is exact at these T.
BUCKET_EDGES: tuple[float, ...] = (13.0, 16.0, 18.0, 25.0)
THRESHOLDS: tuple[int, ...] = (13, 16, 18)
BUFFERS: tuple[int, ...] = tuple(range(8))
CS_KS: tuple[int, ...] = tuple(range(1, 11))
# Bands put a boundary at every threshold we act on, so a band never straddles a decision.
AGE_BANDS: tuple[tuple[float, float], ...] = (
    (0, 13),
    (13, 16),
    (16, 18),
    (18, 21),
    (21, 25),
    (25, 30),
    (30, 40),
    (40, 60),
    (60, 200),
)
SINGLE_YEARS: tuple[int, int] = (6, 30)  # inclusive range always reported by single year of age
DEFAULT_CONFIDENCE = 0.95
CS_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Estimates:
    """One model's scores on a dataset, aligned row by row with the manifest rows it scored.

    Rows whose frame could not be scored are dropped before this is built and counted in `n_errors`,
    because an error is not an age estimate and must not drag MAE either way.
    """

    true_age: FloatArray
    mean: FloatArray
    std: FloatArray
    attributes: Mapping[str, NDArray[Any]] = field(default_factory=dict)
    bucket_probs: FloatArray | None = None  # (n, 5) for the legacy classifier
    n_errors: int = 0
    subject_id: NDArray[Any] | None = None  # lets a policy replay fuse one person's frames
    row_id: NDArray[Any] | None = None  # manifest path: pairs two models' rows for the gate

    @classmethod
    def build(
        cls,
        true_age: ArrayLike,
        mean: ArrayLike,
        std: ArrayLike | None = None,
        attributes: Mapping[str, Sequence[Any] | NDArray[Any]] | None = None,
        bucket_probs: ArrayLike | None = None,
        n_errors: int = 0,
        subject_id: Sequence[Any] | NDArray[Any] | None = None,
        row_id: Sequence[Any] | NDArray[Any] | None = None,
    ) -> Estimates:
        t = np.asarray(true_age, dtype=np.float64).reshape(-1)
        m = np.asarray(mean, dtype=np.float64).reshape(-1)
        s = np.full_like(m, np.nan) if std is None else np.asarray(std, dtype=np.float64).reshape(-1)
        if not (t.shape == m.shape == s.shape):
            raise ValueError(f"true_age, mean and std must align: {t.shape}, {m.shape}, {s.shape}")
        attrs = {k: np.asarray([str(x) for x in v], dtype=object) for k, v in (attributes or {}).items()}
        for k, v in attrs.items():
            if v.shape != t.shape:
                raise ValueError(f"attribute {k!r} has {v.shape[0]} values for {t.shape[0]} rows")
        bp = None
        if bucket_probs is not None:
            bp = np.asarray(bucket_probs, dtype=np.float64)
            if bp.shape != (t.shape[0], len(BUCKET_EDGES) + 1):
                raise ValueError(f"bucket_probs must be (n, {len(BUCKET_EDGES) + 1}), got {bp.shape}")
        sid = None
        if subject_id is not None:
            sid = np.asarray([str(x) for x in subject_id], dtype=object)
            if sid.shape != t.shape:
                raise ValueError(f"subject_id has {sid.shape[0]} values for {t.shape[0]} rows")
        rid = None
        if row_id is not None:
            rid = np.asarray([str(x) for x in row_id], dtype=object)
            if rid.shape != t.shape:
                raise ValueError(f"row_id has {rid.shape[0]} values for {t.shape[0]} rows")
        return cls(t, m, s, attrs, bp, n_errors, sid, rid)

    def __len__(self) -> int:
        return int(self.true_age.shape[0])

    def subset(self, mask: BoolArray) -> Estimates:
        return Estimates(
            self.true_age[mask],
            self.mean[mask],
            self.std[mask],
            {k: v[mask] for k, v in self.attributes.items()},
            None if self.bucket_probs is None else self.bucket_probs[mask],
            0,
            None if self.subject_id is None else self.subject_id[mask],
            None if self.row_id is None else self.row_id[mask],
        )


def _arr(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _mean(x: FloatArray | BoolArray) -> float:
    return float(np.mean(x)) if x.size else math.nan


# --- accuracy --------------------------------------------------------------------------------------


def mae(true_age: ArrayLike, pred: ArrayLike) -> float:
    return _mean(np.abs(_arr(pred) - _arr(true_age)))


def mean_signed_error(true_age: ArrayLike, pred: ArrayLike) -> float:
    """Positive means the model overestimates, which is the direction that lets minors through."""
    return _mean(_arr(pred) - _arr(true_age))


def rmse(true_age: ArrayLike, pred: ArrayLike) -> float:
    e = _arr(pred) - _arr(true_age)
    return math.sqrt(float(np.mean(e * e))) if e.size else math.nan


def cs_at_k(true_age: ArrayLike, pred: ArrayLike, k: float) -> float:
    """Cumulative score: fraction of estimates within k years (inclusive) of the true age.

    Inclusive up to float round-off: 18.3 + 1 - 18.3 is not exactly 1, and that must not decide."""
    return _mean(np.abs(_arr(pred) - _arr(true_age)) <= k + CS_EPS)


def accuracy_summary(true_age: ArrayLike, pred: ArrayLike, ks: Iterable[int] = CS_KS) -> dict[str, float]:
    t, p = _arr(true_age), _arr(pred)
    out: dict[str, float] = {
        "n": float(t.size),
        "mae": mae(t, p),
        "mean_signed_error": mean_signed_error(t, p),
        "rmse": rmse(t, p),
    }
    for k in ks:
        out[f"cs_{k}"] = cs_at_k(t, p, k)
    return out


def band_label(lo: float, hi: float) -> str:
    return f"{int(lo)}-{int(hi) - 1}" if hi < 200 else f"{int(lo)}+"


def by_age_band(
    true_age: ArrayLike, pred: ArrayLike, bands: Sequence[tuple[float, float]] = AGE_BANDS
) -> dict[str, dict[str, float]]:
    t, p = _arr(true_age), _arr(pred)
    out = {}
    for lo, hi in bands:
        m = (t >= lo) & (t < hi)
        out[band_label(lo, hi)] = accuracy_summary(t[m], p[m])
    return out


def by_single_year(
    true_age: ArrayLike, pred: ArrayLike, years: tuple[int, int] = SINGLE_YEARS
) -> dict[str, dict[str, float]]:
    """Ages are floored (a 17.9-year-old is 17), the legal convention; every year in the range is
    reported, empty ones with n = 0 and NaN metrics, so a missing year is visible rather than absent."""
    t, p = _arr(true_age), _arr(pred)
    yrs = np.floor(t)
    lo = min(years[0], int(yrs.min())) if t.size else years[0]
    hi = max(years[1], int(yrs.max())) if t.size else years[1]
    return {str(y): accuracy_summary(t[yrs == y], p[yrs == y]) for y in range(lo, hi + 1)}


# --- thresholds ------------------------------------------------------------------------------------


def normal_cdf(x: ArrayLike) -> FloatArray:
    xs = _arr(x)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(xs / math.sqrt(2.0))) if xs.size else xs


def prob_at_least(est: Estimates, threshold: float) -> FloatArray:
    """P(age >= T) per row. The legacy classifier's own bucket mass is used when T is one of its
    edges (that is what it was trained to answer); otherwise the Gaussian (mean, std)."""
    if est.bucket_probs is not None and float(threshold) in BUCKET_EDGES:
        first = BUCKET_EDGES.index(float(threshold)) + 1
        return np.clip(est.bucket_probs[:, first:].sum(axis=1), 0.0, 1.0)
    return gaussian_prob_at_least(est.mean, est.std, threshold)


def gaussian_prob_at_least(mean: ArrayLike, std: ArrayLike, threshold: float) -> FloatArray:
    m, s = _arr(mean), _arr(std)
    s = np.where(np.isfinite(s) & (s > 0), s, 1e-9)  # no uncertainty: a step at the threshold
    return 1.0 - normal_cdf((threshold - m) / s)


def pass_rate(true_age: ArrayLike, pred: ArrayLike, lo: float, hi: float, cutoff: float) -> float:
    """Fraction of people with lo <= true age < hi whose estimate is at least `cutoff`."""
    t, p = _arr(true_age), _arr(pred)
    m = (t >= lo) & (t < hi)
    return _mean(p[m] >= cutoff)


def under_age_pass_rate(true_age: ArrayLike, pred: ArrayLike, threshold: float, buffer: float = 0.0) -> float:
    """Minors (true age < T) let through by the rule `estimate >= T + buffer`."""
    return pass_rate(true_age, pred, -math.inf, threshold, threshold + buffer)


def under_age_pass_rate_by_year(
    true_age: ArrayLike, pred: ArrayLike, threshold: int, buffer: float = 0.0, youngest: int = 6
) -> dict[str, float]:
    return {
        str(y): pass_rate(true_age, pred, y, y + 1, threshold + buffer)
        for y in range(min(youngest, threshold - 1), threshold)
    }


def false_rejection_rate(
    true_age: ArrayLike, pred: ArrayLike, threshold: float, buffer: float = 0.0, span: float = 3.0
) -> float:
    """Adults just over the line (T <= true age < T + span, i.e. T to T+2) refused by `estimate >= T + buffer`."""
    t, p = _arr(true_age), _arr(pred)
    m = (t >= threshold) & (t < threshold + span)
    return _mean(p[m] < threshold + buffer)


@dataclass(frozen=True, slots=True)
class UncertainOutcome:
    """The three-way outcome of an uncertainty-aware rule for each row."""

    passed: BoolArray
    rejected: BoolArray
    fallback: BoolArray


def uncertainty_rule(p_at_least: ArrayLike, confidence: float = DEFAULT_CONFIDENCE) -> UncertainOutcome:
    """Pass when P(age >= T) >= c, reject when P(age < T) >= c, otherwise send to verification."""
    p = _arr(p_at_least)
    passed = p >= confidence
    rejected = (1.0 - p) >= confidence
    return UncertainOutcome(passed, rejected & ~passed, ~passed & ~rejected)


def uncertainty_rule_rates(
    true_age: ArrayLike,
    p_at_least: ArrayLike,
    threshold: float,
    confidence: float = DEFAULT_CONFIDENCE,
    span: float = 3.0,
) -> dict[str, float]:
    t = _arr(true_age)
    o = uncertainty_rule(p_at_least, confidence)
    minors = t < threshold
    near = (t >= threshold) & (t < threshold + span)
    return {
        "confidence": confidence,
        "under_age_pass_rate": _mean(o.passed[minors]),
        "false_rejection_rate": _mean(o.rejected[near]),
        "fallback_rate": _mean(o.fallback),
        "fallback_rate_under_age": _mean(o.fallback[minors]),
        "fallback_rate_near_adults": _mean(o.fallback[near]),
        "pass_rate": _mean(o.passed),
    }


def threshold_metrics(
    est: Estimates,
    thresholds: Iterable[int] = THRESHOLDS,
    buffers: Iterable[int] = BUFFERS,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    t, p = est.true_age, est.mean
    out: dict[str, Any] = {}
    for T in thresholds:
        per_buffer = {}
        for b in buffers:
            per_buffer[str(b)] = {
                "cutoff": float(T + b),
                "under_age_pass_rate": under_age_pass_rate(t, p, T, b),
                "under_age_pass_rate_by_year": under_age_pass_rate_by_year(t, p, T, b),
                "false_rejection_rate": false_rejection_rate(t, p, T, b),
            }
        out[str(T)] = {
            "buffers": per_buffer,
            "uncertainty_rule": uncertainty_rule_rates(t, prob_at_least(est, T), T, confidence),
        }
    return out


# --- NIST FATE AEV application metrics (NIST IR 8525) ---------------------------------------------


NIST_TEEN_AGES: tuple[int, int] = (14, 17)  # inclusive; NIST's Challenge-25 FPR population
CHALLENGE_AGES: tuple[int, ...] = (21, 23, 25)
LEGAL_AGE = 18


def challenge_fpr(
    true_age: ArrayLike, pred: ArrayLike, challenge_age: float = 25, ages: tuple[float, float] = NIST_TEEN_AGES
) -> float:
    """Challenge-T false positive rate: people with ages[0] <= floor(true age) <= ages[1] estimated at least
    T, i.e. minors a Challenge-T check would not even challenge. NIST's population is 14-17."""
    return pass_rate(true_age, pred, ages[0], ages[1] + 1, challenge_age)


def challenge_fpr_under_18(true_age: ArrayLike, pred: ArrayLike, challenge_age: float = 25) -> float:
    """The same over every minor (true age < 18), young children included: a different, smaller number
    than NIST's, kept under its own name."""
    return pass_rate(true_age, pred, -math.inf, LEGAL_AGE, challenge_age)


def challenge_fnr(true_age: ArrayLike, pred: ArrayLike, challenge_age: float = 25) -> float:
    """Challenge-T false negatives: adults aged T or over estimated under T, who are challenged (asked
    for ID) although the policy means to wave them through."""
    t, p = _arr(true_age), _arr(pred)
    m = t >= challenge_age
    return _mean(p[m] < challenge_age)


def challenge_25_rate(true_age: ArrayLike, pred: ArrayLike) -> float:
    """All-under-18 Challenge-25 rate (minors estimated 25+); see `challenge_fpr` for NIST's 14-17 figure."""
    return challenge_fpr_under_18(true_age, pred, 25)


def challenge_metrics(
    true_age: ArrayLike, pred: ArrayLike, challenge_ages: Iterable[int] = CHALLENGE_AGES
) -> dict[str, dict[str, float]]:
    return {
        str(c): {
            "fpr_14_17": challenge_fpr(true_age, pred, c),
            "fpr_under_18": challenge_fpr_under_18(true_age, pred, c),
            "fnr_adults": challenge_fnr(true_age, pred, c),
        }
        for c in challenge_ages
    }


def _in_13_16(pred: FloatArray) -> BoolArray:
    # "estimated 13 to 16" means an estimate that floors to 13..16, i.e. 13 <= estimate < 17.
    return (pred >= 13) & (pred < 17)


def child_online_safety_rates(true_age: ArrayLike, pred: ArrayLike) -> dict[str, float]:
    """NIST's 13-16 chat-room task: TPR among true 13-16, FPR among true 8-12 and 17-22."""
    t, p = _arr(true_age), _arr(pred)
    yrs = np.floor(t)
    hit = _in_13_16(p)

    def rate(lo: int, hi: int) -> float:
        return _mean(hit[(yrs >= lo) & (yrs <= hi)])

    return {"tpr_13_16": rate(13, 16), "fpr_8_12": rate(8, 12), "fpr_17_22": rate(17, 22)}


def nist_metrics(true_age: ArrayLike, pred: ArrayLike) -> dict[str, float]:
    out = {
        "challenge_25_fpr_14_17": challenge_fpr(true_age, pred, 25),
        "challenge_25_fpr_under_18": challenge_fpr_under_18(true_age, pred, 25),
        "challenge_25_fnr_25_plus": challenge_fnr(true_age, pred, 25),
    }
    out.update({f"cos_{k}": v for k, v in child_online_safety_rates(true_age, pred).items()})
    return out
