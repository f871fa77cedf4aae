"""Operating curves and matched operating points.

Two models at the same fixed buffer sit at different points of the trade-off between letting minors
through and refusing adults, so comparing them there says little: one may pass fewer minors *and*
refuse more adults. The fair comparison fixes the safety side (each model's cutoff chosen so its
under-T pass rate is at most P) and compares what that costs adults; likewise the challenge age each
model needs so that at most P of 14-17-year-olds are estimated at or above it.

Everything takes a (B, n) matrix of per-row weights, so all subject-bootstrap replicates
(`SubjectBootstrap.weights`) are computed at once; no weights gives the point estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from model.evaluation.bootstrap import FloatArray, SubjectBootstrap, percentile_interval
from model.evaluation.metrics import NIST_TEEN_AGES, THRESHOLDS, BoolArray, Estimates

NEAR_SPAN = 3.0  # "legal-age" population: T <= true age < T + 3, as in false_rejection_rate
BUFFER_GRID: tuple[float, ...] = tuple(np.round(np.arange(-2.0, 10.01, 0.5), 2))
K_GRID: tuple[float, ...] = tuple(np.round(np.arange(-1.0, 3.01, 0.25), 2))
MATCHED_TARGETS: tuple[float, ...] = (0.01, 0.02, 0.05)
FPR_TARGETS: tuple[float, ...] = (0.01, 0.02, 0.05)


def cutoff_for_rate(scores: FloatArray, weights: FloatArray, target: float) -> FloatArray:
    """Per weight row (weights is (B, n) or (n,)), the smallest cutoff c with weighted
    fraction(scores >= c) <= target: the strictest a model must be to let at most `target` of this
    population through. Rows with zero weight are outside the population; NaN for an empty one."""
    w2 = np.atleast_2d(weights)
    order = np.argsort(-scores, kind="stable")
    s, w = scores[order], w2[:, order]
    total = w.sum(axis=1)
    out = np.full(w.shape[0], np.nan)
    ok = total > 0
    if not ok.any():
        return out
    cum = np.cumsum(w[ok], axis=1) / total[ok, None]
    over = cum > target + 1e-12
    # the first row where the running share exceeds the target, among rows that are in the population
    over &= w[ok] > 0
    j = np.where(over.any(axis=1), np.argmax(over, axis=1), s.size - 1)
    # Everything strictly above s[j] passes; its share is <= target (ties at s[j] are all excluded).
    out[ok] = np.nextafter(s[j], math.inf)
    return out


def rate_below(score: FloatArray, mask: BoolArray, cutoffs: FloatArray, weights: FloatArray) -> FloatArray:
    """Per row of weights: weighted fraction of the `mask` population with score < its cutoff."""
    w = np.atleast_2d(weights)[:, mask]
    below = score[mask][None, :] < cutoffs[:, None]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(total > 0, (w * below).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)
    return np.where(np.isfinite(cutoffs), out, np.nan)


def matched_point(
    score: FloatArray, true_age: FloatArray, threshold: float, target: float, weights: FloatArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """(cutoffs, legal-age rejection rates), one per weight row, for the rule `score >= cutoff` tuned to
    pass at most `target` of the under-T population. No weights: the point estimate, arrays of one."""
    w = np.ones((1, score.size)) if weights is None else np.atleast_2d(weights)
    minors = true_age < threshold
    near = (true_age >= threshold) & (true_age < threshold + NEAR_SPAN)
    c = cutoff_for_rate(score, w * minors, target)
    return c, rate_below(score, near, c, w)


def challenge_age_for_fpr(
    mean: FloatArray, true_age: FloatArray, target: float, weights: FloatArray | None = None
) -> FloatArray:
    """Smallest challenge age C with at most `target` of 14-17-year-olds estimated >= C, per weight row."""
    w = np.ones((1, mean.size)) if weights is None else np.atleast_2d(weights)
    yrs = np.floor(true_age)
    teens = (yrs >= NIST_TEEN_AGES[0]) & (yrs <= NIST_TEEN_AGES[1])
    return cutoff_for_rate(mean, w * teens, target)


def _z_score(est: Estimates, threshold: float) -> FloatArray | None:
    """(mean - T) / std: the rule `mean - k*std >= T` is `z >= k`. None when std is unavailable."""
    if not len(est) or not bool(np.all(np.isfinite(est.std) & (est.std > 0))):
        return None
    z: FloatArray = (est.mean - threshold) / est.std
    return z


def curve(
    score: FloatArray, true_age: FloatArray, threshold: float, cutoffs: Iterable[float], param: str
) -> list[dict[str, Any]]:
    minors = true_age < threshold
    near = (true_age >= threshold) & (true_age < threshold + NEAR_SPAN)
    out = []
    for c in cutoffs:
        passed = score >= c
        out.append(
            {
                param: float(c),
                "under_age_pass_rate": float(passed[minors].mean()) if minors.any() else None,
                "legal_age_rejection_rate": float((~passed[near]).mean()) if near.any() else None,
            }
        )
    return out


def _cell(point: FloatArray, reps: FloatArray) -> dict[str, Any]:
    v = float(point[0])
    return {"value": v if math.isfinite(v) else None, "ci": percentile_interval(reps)}


def _first(x: FloatArray) -> float | None:
    v = float(x[0])
    return v if math.isfinite(v) else None


def operating_report(
    est: Estimates,
    boot: SubjectBootstrap,
    *,
    thresholds: Sequence[int] = THRESHOLDS,
    targets: Sequence[float] = MATCHED_TARGETS,
    fpr_targets: Sequence[float] = FPR_TARGETS,
) -> dict[str, Any]:
    """Curves for both rule families, matched points with subject-level intervals, and the challenge
    age each FPR target needs."""
    t, m, W = est.true_age, est.mean, boot.weights
    out: dict[str, Any] = {}
    for T in thresholds:
        buffer_score = m - T  # rule estimate >= T + buffer
        z = _z_score(est, T)
        entry: dict[str, Any] = {
            "curve_buffer": curve(buffer_score, t, T, BUFFER_GRID, "buffer"),
            "curve_k_std": None if z is None else curve(z, t, T, K_GRID, "k"),
            "matched": {},
        }
        for p in targets:
            b, rej = matched_point(buffer_score, t, T, p)
            cell: dict[str, Any] = {
                "buffer": _first(b),
                "legal_age_rejection_rate": _cell(rej, matched_point(buffer_score, t, T, p, W)[1]),
            }
            if z is not None:
                k, rej_k = matched_point(z, t, T, p)
                cell["k_std"] = {
                    "k": _first(k),
                    "legal_age_rejection_rate": _cell(rej_k, matched_point(z, t, T, p, W)[1]),
                }
            entry["matched"][f"{p:g}"] = cell
        out[str(T)] = entry
    out["challenge_age_for_fpr"] = {
        f"{p:g}": _cell(challenge_age_for_fpr(m, t, p), challenge_age_for_fpr(m, t, p, W)) for p in fpr_targets
    }
    return out
