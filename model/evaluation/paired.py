"""Statistics the release gate compares, each computable under subject-bootstrap weights.

A statistic is a function of one model's `Estimates` and a (B, n) matrix of per-row weights that
returns one value per weight row; a row of ones is the point estimate. Applying the *same* weight
matrix (the same resampled subjects) to the reference and the candidate, scored on the same rows,
gives replicates of their paired difference, whose spread is what separates a regression from
noise: two seeds of one architecture differ by a handful of minors, and a gate that reacts to the
point estimate blocks them.

`align` pairs two models' rows by manifest path (a frame one model failed to score is dropped from
both, so both are judged on identical people).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.evaluation.bootstrap import FloatArray, SubjectBootstrap
from model.evaluation.calibration import MIN_STD, interval_covered
from model.evaluation.metrics import (
    DEFAULT_CONFIDENCE,
    NIST_TEEN_AGES,
    BoolArray,
    Estimates,
    prob_at_least,
    uncertainty_rule,
)
from model.evaluation.operating import challenge_age_for_fpr, matched_point, rate_below

NEAR_SPAN = 3.0


class StatisticError(ValueError):
    """A gate rule names an unknown statistic or omits a parameter it needs."""


def _wmean(values: FloatArray, eligible: BoolArray, w: FloatArray) -> FloatArray:
    """Weighted mean of values over eligible rows, per weight row; NaN where nothing is eligible."""
    e = eligible.astype(np.float64)
    v = np.where(eligible, values, 0.0)
    num = w @ (v * e)
    den = w @ e
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


@dataclass(frozen=True, slots=True)
class Params:
    threshold: float = 18.0
    buffer: float = 0.0
    target: float = 0.01
    level: float = 0.95
    challenge_age: float = 25.0
    attribute: str = ""
    group_metric: str = "mae"  # group_gap: which per-row metric the groups are compared on
    rule: str = "buffer"  # matched points: "buffer" (estimate >= T + b) or "k_std" (mean - k*std >= T)
    confidence: float = DEFAULT_CONFIDENCE  # of the uncertainty-aware policy rule
    min_subjects: int = 30  # groups with fewer subjects are left out of a gap


Statistic = Callable[[Estimates, FloatArray, Params], FloatArray]


def _mae(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return _wmean(np.abs(est.mean - est.true_age), np.ones(len(est), dtype=bool), w)


def _under_age_pass(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return _wmean((est.mean >= p.threshold + p.buffer).astype(float), est.true_age < p.threshold, w)


def _near(est: Estimates, p: Params) -> BoolArray:
    t = est.true_age
    near: BoolArray = (t >= p.threshold) & (t < p.threshold + NEAR_SPAN)
    return near


def _false_rejection(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return _wmean((est.mean < p.threshold + p.buffer).astype(float), _near(est, p), w)


def _challenge_fpr_14_17(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    yrs = np.floor(est.true_age)
    teens = (yrs >= NIST_TEEN_AGES[0]) & (yrs <= NIST_TEEN_AGES[1])
    return _wmean((est.mean >= p.challenge_age).astype(float), teens, w)


def _challenge_fpr_under_18(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return _wmean((est.mean >= p.challenge_age).astype(float), est.true_age < 18, w)


def _challenge_fnr(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return _wmean((est.mean < p.challenge_age).astype(float), est.true_age >= p.challenge_age, w)


def _outcome(est: Estimates, p: Params) -> Any:
    return uncertainty_rule(prob_at_least(est, p.threshold), p.confidence)


def _uncertainty_pass(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return _wmean(_outcome(est, p).passed.astype(float), est.true_age < p.threshold, w)


def _fallback(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return _wmean(_outcome(est, p).fallback.astype(float), np.ones(len(est), dtype=bool), w)


def _score(est: Estimates, p: Params) -> FloatArray:
    if p.rule == "k_std":
        s = np.where(np.isfinite(est.std) & (est.std > 0), est.std, np.nan)
        z: FloatArray = (est.mean - p.threshold) / s
        return np.where(np.isfinite(z), z, -np.inf)
    b: FloatArray = est.mean - p.threshold
    return b


def _matched_rejection(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return matched_point(_score(est, p), est.true_age, p.threshold, p.target, w)[1]


def _challenge_age_needed(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    return challenge_age_for_fpr(est.mean, est.true_age, p.target, w)


def _matched_challenge_fnr(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    """Adults aged `challenge_age`+ challenged (estimated under C) when each model uses the challenge age C
    that keeps its 14-17 false positive rate <= target: the adult cost of Challenge-25 at a matched
    safety level, not at a fixed C where the safer model always challenges more adults."""
    c = challenge_age_for_fpr(est.mean, est.true_age, p.target, w)
    return rate_below(est.mean, est.true_age >= p.challenge_age, c, w)


def _has_std(est: Estimates) -> bool:
    return bool(len(est)) and bool(np.all(np.isfinite(est.std)))


def _coverage_error(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    """|coverage - nominal|: too narrow and too wide intervals both count, so an over-wide std that
    covers everyone cannot pass a one-sided rule by accident."""
    if not _has_std(est):
        return np.full(w.shape[0], np.nan)
    covered = interval_covered(est.true_age, est.mean, est.std, p.level).astype(float)
    return np.abs(_wmean(covered, np.ones(len(est), dtype=bool), w) - p.level)


def _nll(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    if not _has_std(est):
        return np.full(w.shape[0], np.nan)
    s = np.maximum(est.std, MIN_STD)
    per_row = 0.5 * np.log(2 * math.pi * s * s) + (est.true_age - est.mean) ** 2 / (2 * s * s)
    return _wmean(per_row, np.ones(len(est), dtype=bool), w)


def _ece(est: Estimates, w: FloatArray, p: Params, n_bins: int = 10) -> FloatArray:
    """Expected calibration error of P(age >= T), weighted: sum over bins of |observed - predicted| mass."""
    prob = prob_at_least(est, p.threshold)
    outcome = (est.true_age >= p.threshold).astype(float)
    idx = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    total = w.sum(axis=1)
    err = np.zeros(w.shape[0])
    for b in range(n_bins):
        sel = (idx == b).astype(float)
        err += np.abs(w @ (sel * outcome) - w @ (sel * prob))
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(total > 0, err / np.where(total > 0, total, 1.0), np.nan)
    return out


GROUP_METRICS: dict[str, Callable[[Estimates, Params], tuple[FloatArray, BoolArray]]] = {
    "mae": lambda e, p: (np.abs(e.mean - e.true_age), np.ones(len(e), dtype=bool)),
    "mean_signed_error": lambda e, p: (e.mean - e.true_age, np.ones(len(e), dtype=bool)),
    "under_age_pass_rate": lambda e, p: ((e.mean >= p.threshold + p.buffer).astype(float), e.true_age < p.threshold),
    "false_rejection_rate": lambda e, p: ((e.mean < p.threshold + p.buffer).astype(float), _near(e, p)),
}


def _group_gap(est: Estimates, w: FloatArray, p: Params) -> FloatArray:
    """Largest minus smallest group value of `group_metric` over groups of `attribute` with enough subjects."""
    if p.attribute not in est.attributes:
        return np.full(w.shape[0], np.nan)
    if p.group_metric not in GROUP_METRICS:
        raise StatisticError(f"group_gap group_metric {p.group_metric!r} unknown; one of {sorted(GROUP_METRICS)}")
    values, eligible = GROUP_METRICS[p.group_metric](est, p)
    groups = est.attributes[p.attribute]
    subjects = est.subject_id if est.subject_id is not None else np.arange(len(est)).astype(str)
    per_group = []
    for g in sorted({str(x) for x in groups}):
        sel = (groups == g) & eligible
        if len(set(subjects[sel].tolist())) >= max(p.min_subjects, 1):
            per_group.append(_wmean(values, sel, w))
    if len(per_group) < 2:
        return np.full(w.shape[0], np.nan)
    stacked = np.stack(per_group, axis=1)
    out: FloatArray = np.nanmax(stacked, axis=1) - np.nanmin(stacked, axis=1)
    return out


STATISTICS: dict[str, tuple[Statistic, tuple[str, ...], str]] = {
    # name: (function, parameters it reads, what it measures)
    "mae": (_mae, (), "mean absolute error, years"),
    "under_age_pass_rate": (_under_age_pass, ("threshold", "buffer"), "under-T passed by estimate >= T + buffer"),
    "false_rejection_rate": (_false_rejection, ("threshold", "buffer"), "T..T+2 refused by estimate >= T + buffer"),
    "challenge_fpr_14_17": (_challenge_fpr_14_17, ("challenge_age",), "14-17 estimated >= challenge age (NIST)"),
    "challenge_fpr_under_18": (_challenge_fpr_under_18, ("challenge_age",), "all under 18 estimated >= challenge age"),
    "challenge_fnr": (_challenge_fnr, ("challenge_age",), "adults >= challenge age estimated under it"),
    "uncertainty_pass_rate": (
        _uncertainty_pass,
        ("threshold", "confidence"),
        "under-T passed by P(age >= T) >= confidence",
    ),
    "fallback_rate": (_fallback, ("threshold", "confidence"), "everyone sent to verification at T"),
    "matched_rejection": (
        _matched_rejection,
        ("threshold", "target", "rule"),
        "T..T+2 refused when the cutoff keeps under-T pass <= target",
    ),
    "matched_challenge_fnr": (
        _matched_challenge_fnr,
        ("target", "challenge_age"),
        "adults >= challenge_age challenged at the challenge age giving 14-17 FPR <= target",
    ),
    "challenge_age_for_fpr": (_challenge_age_needed, ("target",), "challenge age needed for 14-17 FPR <= target"),
    "coverage_error": (_coverage_error, ("level",), "|coverage of the central interval - nominal|"),
    "nll": (_nll, (), "Gaussian negative log-likelihood, nats"),
    "ece": (_ece, ("threshold",), "expected calibration error of P(age >= T)"),
    "group_gap": (
        _group_gap,
        ("attribute", "group_metric", "threshold", "buffer", "min_subjects"),
        "largest - smallest group value of `group_metric` across groups of `attribute`",
    ),
}


def compute(name: str, est: Estimates, weights: FloatArray | None, params: Params) -> FloatArray:
    if name not in STATISTICS:
        raise StatisticError(f"unknown statistic {name!r}; one of {sorted(STATISTICS)}")
    w = np.ones((1, len(est))) if weights is None else np.atleast_2d(weights)
    return STATISTICS[name][0](est, w, params)


def align(reference: Estimates, candidate: Estimates) -> tuple[Estimates, Estimates]:
    """The rows both models scored, in the same order. Without row ids the two must already align."""
    if reference.row_id is None or candidate.row_id is None:
        if len(reference) != len(candidate) or not np.allclose(reference.true_age, candidate.true_age):
            raise ValueError("cannot pair models: no row ids and the rows differ")
        return reference, candidate
    common = sorted(set(reference.row_id.tolist()) & set(candidate.row_id.tolist()))
    pos_r = {r: i for i, r in enumerate(reference.row_id.tolist())}
    pos_c = {r: i for i, r in enumerate(candidate.row_id.tolist())}
    mr = np.zeros(len(reference), dtype=bool)
    mc = np.zeros(len(candidate), dtype=bool)
    mr[[pos_r[r] for r in common]] = True
    mc[[pos_c[r] for r in common]] = True
    ref, cand = reference.subset(mr), candidate.subset(mc)
    # subset keeps each model's own order; sort both by row id so row i is the same image in both
    ref_ids = np.asarray(ref.row_id, dtype=str)
    cand_ids = np.asarray(cand.row_id, dtype=str)
    return _take(ref, np.argsort(ref_ids)), _take(cand, np.argsort(cand_ids))


def _take(est: Estimates, order: Any) -> Estimates:
    return Estimates(
        est.true_age[order],
        est.mean[order],
        est.std[order],
        {k: v[order] for k, v in est.attributes.items()},
        None if est.bucket_probs is None else est.bucket_probs[order],
        est.n_errors,
        None if est.subject_id is None else est.subject_id[order],
        None if est.row_id is None else est.row_id[order],
    )


def paired_replicates(
    name: str, reference: Estimates, candidate: Estimates, params: Params, boot: SubjectBootstrap
) -> dict[str, Any]:
    """Point values of both models and replicates of candidate - reference on the same resampled subjects."""
    ref_point = float(compute(name, reference, None, params)[0])
    cand_point = float(compute(name, candidate, None, params)[0])
    cand_reps = compute(name, candidate, boot.weights, params)
    diff = cand_reps - compute(name, reference, boot.weights, params)
    return {"reference": ref_point, "candidate": cand_point, "diff": diff, "candidate_reps": cand_reps}


def params_from(doc: Mapping[str, Any]) -> Params:
    fields = {f for f in Params.__dataclass_fields__}
    kw: dict[str, Any] = {}
    for k, v in doc.items():
        if k in fields:
            kw[k] = type(getattr(Params(), k))(v)
    return Params(**kw)
