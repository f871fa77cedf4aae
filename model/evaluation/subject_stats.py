"""The report's rates with subject-level intervals: headline figures and per-single-year tables.

Every cell is {value, ci, n_subjects, n_images} from the shared `SubjectBootstrap`, so a reader sees
how many people (not photos) a rate rests on and how wide it really is. Populations are named in
`DEFINITIONS` (copied into metrics.json) so nobody has to guess which minors a rate counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from model.evaluation.bootstrap import FloatArray, SubjectBootstrap, estimate, estimates
from model.evaluation.calibration import interval_covered
from model.evaluation.metrics import (
    BUFFERS,
    CS_EPS,
    DEFAULT_CONFIDENCE,
    LEGAL_AGE,
    NIST_TEEN_AGES,
    THRESHOLDS,
    BoolArray,
    Estimates,
    prob_at_least,
    uncertainty_rule,
)

PASS_YEARS_FROM = 10  # under-age pass rate is tabulated for single years 10..T-1
REJECT_YEARS = 5  # false rejection for single years T..T+4

DEFINITIONS: dict[str, str] = {
    "mae": "mean |estimate - true age|, years; everyone",
    "cs_5": "fraction with |estimate - true age| <= 5; everyone",
    "under_18_pass_rate_at_C": "true age < 18 with estimate >= C (C = 18, 21, 25: buffers 0, 3, 7)",
    "false_rejection_18_20_at_C": "18 <= true age < 21 with estimate < C",
    "challenge_25_fpr_14_17": "NIST FATE Challenge-25 false positive rate: true age 14-17 (floored) estimated >= 25",
    "challenge_25_fpr_under_18": "all-under-18 variant: every true age < 18 (young children included) estimated >= 25",
    "challenge_25_fnr_25_plus": "Challenge-25 false negatives: true age >= 25 estimated < 25 (adults challenged)",
    "challenge.C.fpr_14_17 / fpr_under_18 / fnr_adults": "the same three for challenge age C",
    "fallback_rate_18": "everyone sent to verification by the uncertainty rule at 18 (confidence c)",
    "coverage_p95": "true age inside the central 95% interval mean +- 1.96 std; everyone",
    "by_year.T.B.under_age_pass.Y": "floor(true age) == Y (Y = 10..T-1) with estimate >= T + B",
    "by_year.T.B.false_rejection.Y": "floor(true age) == Y (Y = T..T+4) with estimate < T + B",
    "operating.T.matched.P": "smallest cutoff keeping the under-T pass rate <= P, and the rejection of "
    "T <= true age < T+3 it costs (each model at its own cutoff)",
    "operating.challenge_age_for_fpr.P": "smallest challenge age C with the 14-17 false positive rate <= P",
}


def headline_cells(
    est: Estimates, boot: SubjectBootstrap, confidence: float = DEFAULT_CONFIDENCE
) -> dict[str, dict[str, Any]]:
    """The figures a release note quotes, each with a subject-level 95% interval and its counts."""
    t, m = est.true_age, est.mean
    err = m - t
    everyone = np.ones(len(est), dtype=bool)
    minors = t < LEGAL_AGE
    near = (t >= LEGAL_AGE) & (t < LEGAL_AGE + 3)
    teens = (np.floor(t) >= NIST_TEEN_AGES[0]) & (np.floor(t) <= NIST_TEEN_AGES[1])
    cells: dict[str, dict[str, Any]] = {
        "mae": estimate(boot, np.abs(err), everyone),
        "mean_signed_error": estimate(boot, err, everyone),
        "cs_5": estimate(boot, (np.abs(err) <= 5 + CS_EPS).astype(float), everyone),
    }
    for b in (0, 3, 7):
        c = LEGAL_AGE + b
        cells[f"under_18_pass_rate_at_{c}"] = estimate(boot, (m >= c).astype(float), minors)
        cells[f"false_rejection_18_20_at_{c}"] = estimate(boot, (m < c).astype(float), near)
    cells["challenge_25_fpr_14_17"] = estimate(boot, (m >= 25).astype(float), teens)
    cells["challenge_25_fpr_under_18"] = estimate(boot, (m >= 25).astype(float), minors)
    cells["challenge_25_fnr_25_plus"] = estimate(boot, (m < 25).astype(float), t >= 25)
    outcome = uncertainty_rule(prob_at_least(est, LEGAL_AGE), confidence)
    cells["fallback_rate_18"] = estimate(boot, outcome.fallback.astype(float), everyone)
    cells["under_18_pass_rate_uncertainty_rule"] = estimate(boot, outcome.passed.astype(float), minors)
    if len(est) and bool(np.all(np.isfinite(est.std))):
        cells["coverage_p95"] = estimate(boot, interval_covered(t, m, est.std, 0.95).astype(float), everyone)
    return cells


def by_year_cells(
    est: Estimates, boot: SubjectBootstrap, thresholds: Iterable[int] = THRESHOLDS, buffers: Iterable[int] = BUFFERS
) -> dict[str, Any]:
    """{T: {B: {"under_age_pass": {year: cell}, "false_rejection": {year: cell}}}}: the per-year rates
    with n and interval, because a pooled under-18 rate hides that 17-year-olds pass far more often."""
    t, m = est.true_age, est.mean
    years = np.floor(t)
    keys: list[tuple[str, str, str, str]] = []
    columns: list[tuple[FloatArray, BoolArray]] = []
    for T in thresholds:
        for b in buffers:
            passed = (m >= T + b).astype(float)
            for y in range(min(PASS_YEARS_FROM, T - 1), T):
                keys.append((str(T), str(b), "under_age_pass", str(y)))
                columns.append((passed, years == y))
            for y in range(T, T + REJECT_YEARS):
                keys.append((str(T), str(b), "false_rejection", str(y)))
                columns.append((1.0 - passed, years == y))
    out: dict[str, Any] = {}
    for (T_, b_, kind, y_), cell in zip(keys, estimates(boot, columns), strict=True):
        per_b = out.setdefault(T_, {}).setdefault(b_, {"under_age_pass": {}, "false_rejection": {}})
        per_b[kind][y_] = cell
    return out
