"""Is the model's stated uncertainty honest? The belief store and the policy trust `std`, so a model
whose 95% interval covers 70% of people would make every confidence threshold a lie."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from model.evaluation.metrics import AGE_BANDS, BoolArray, FloatArray, _arr, _mean, band_label

COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.95)
# Floor on std so a degenerate (zero-variance) prediction gives a large, finite NLL rather than inf.
MIN_STD = 1e-3


def gaussian_nll(true_age: ArrayLike, mean: ArrayLike, std: ArrayLike) -> float:
    """Mean negative log-likelihood of the true ages under N(mean, std^2), in nats."""
    t, m, s = _arr(true_age), _arr(mean), np.maximum(_arr(std), MIN_STD)
    if not t.size:
        return math.nan
    return float(np.mean(0.5 * np.log(2 * math.pi * s * s) + (t - m) ** 2 / (2 * s * s)))


def level_key(level: float) -> str:
    return f"p{round(level * 100)}"


def interval_covered(true_age: ArrayLike, mean: ArrayLike, std: ArrayLike, level: float) -> BoolArray:
    """Whether the central `level` interval mean ± z·std contains the true age (inclusive)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    t, m, s = _arr(true_age), _arr(mean), _arr(std)
    return np.abs(t - m) <= z * s


def coverage(
    true_age: ArrayLike, mean: ArrayLike, std: ArrayLike, levels: Iterable[float] = COVERAGE_LEVELS
) -> dict[str, float]:
    return {level_key(q): _mean(interval_covered(true_age, mean, std, q)) for q in levels}


def coverage_by_band(
    true_age: ArrayLike, mean: ArrayLike, std: ArrayLike, bands: Sequence[tuple[float, float]] = AGE_BANDS
) -> dict[str, dict[str, float]]:
    t, m, s = _arr(true_age), _arr(mean), _arr(std)
    out = {}
    for lo, hi in bands:
        sel = (t >= lo) & (t < hi)
        out[band_label(lo, hi)] = {"n": float(sel.sum()), **coverage(t[sel], m[sel], s[sel])}
    return out


def reliability_curve(prob: ArrayLike, outcome: ArrayLike, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of predicted probability; per bin the mean prediction, the observed frequency
    and the count. Bin i holds [i/n, (i+1)/n), the last bin also holds 1.0."""
    p, y = _arr(prob), _arr(outcome)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1) if p.size else p.astype(np.int64)
    out = []
    for i in range(n_bins):
        sel = idx == i
        out.append(
            {
                "lo": i / n_bins,
                "hi": (i + 1) / n_bins,
                "n": float(sel.sum()),
                "mean_predicted": _mean(p[sel]),
                "observed": _mean(y[sel]),
            }
        )
    return out


def expected_calibration_error(prob: ArrayLike, outcome: ArrayLike, n_bins: int = 10) -> float:
    """Count-weighted mean |observed - predicted| over the reliability bins."""
    p = _arr(prob)
    if not p.size:
        return math.nan
    total = 0.0
    for b in reliability_curve(p, outcome, n_bins):
        if b["n"]:
            total += b["n"] / p.size * abs(b["observed"] - b["mean_predicted"])
    return total


def threshold_calibration(
    true_age: ArrayLike, p_at_least: ArrayLike, threshold: float, n_bins: int = 10
) -> dict[str, Any]:
    outcome = (_arr(true_age) >= threshold).astype(np.float64)
    p: FloatArray = _arr(p_at_least)
    return {
        "ece": expected_calibration_error(p, outcome, n_bins),
        "brier": _mean((p - outcome) ** 2),
        "bins": reliability_curve(p, outcome, n_bins),
    }
