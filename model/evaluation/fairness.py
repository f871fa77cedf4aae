"""Per-group metrics with bootstrap intervals, and the gap between the best and worst group.

A fairness claim is only as good as its sample: every cell carries its counts (subjects and images)
and a 95% subject-level bootstrap interval; a cell with fewer than `min_cell_size` subjects is
marked insufficient instead of reported (a 3-person group's MAE is noise, and printing it invites
someone to act on it); and a gap is flagged significant only when it survives a multiple-comparison
correction over every gap tested in the report, so an unbiased model is not flagged by chance when
many metrics and attributes are compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.evaluation.bootstrap import DEFAULT_BOOTSTRAP, SubjectBootstrap, percentile_interval
from model.evaluation.calibration import interval_covered
from model.evaluation.metrics import (
    CS_EPS,
    DEFAULT_CONFIDENCE,
    BoolArray,
    Estimates,
    FloatArray,
    prob_at_least,
    uncertainty_rule,
)

DEFAULT_MIN_CELL_SIZE = 30
FAMILY_ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric that is the mean of a per-row value over eligible rows (MAE: |error| over everyone;
    under-18 pass rate: passed over minors), which is what makes a cheap, exact bootstrap possible."""

    name: str
    values: FloatArray
    eligible: BoolArray
    description: str


def fairness_specs(est: Estimates, confidence: float = DEFAULT_CONFIDENCE) -> list[MetricSpec]:
    t, m = est.true_age, est.mean
    err = m - t
    everyone = np.ones(len(est), dtype=bool)
    minors = t < 18
    near = (t >= 18) & (t < 21)
    specs = [
        MetricSpec("mae", np.abs(err), everyone, "mean absolute error, years"),
        MetricSpec("mean_signed_error", err, everyone, "mean of estimate - true age, years"),
        MetricSpec("cs_5", (np.abs(err) <= 5 + CS_EPS).astype(float), everyone, "fraction within 5 years"),
        MetricSpec("challenge_25_rate", (m >= 25).astype(float), minors, "minors estimated 25+"),
    ]
    for b in (0, 3, 7):
        specs.append(
            MetricSpec(
                f"under_18_pass_rate_b{b}",
                (m >= 18 + b).astype(float),
                minors,
                f"minors passed by estimate >= {18 + b}",
            )
        )
        specs.append(
            MetricSpec(
                f"false_rejection_18_20_b{b}",
                (m < 18 + b).astype(float),
                near,
                f"18-20 year-olds refused by estimate >= {18 + b}",
            )
        )
    outcome = uncertainty_rule(prob_at_least(est, 18), confidence)
    specs.append(
        MetricSpec(
            "fallback_rate_18",
            outcome.fallback.astype(float),
            everyone,
            f"sent to verification by P(age>=18) at confidence {confidence}",
        )
    )
    if np.all(np.isfinite(est.std)):
        specs.append(
            MetricSpec(
                "coverage_p95",
                interval_covered(t, m, est.std, 0.95).astype(float),
                everyone,
                "true age inside the 95% interval",
            )
        )
    return specs


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def group_metric(
    spec: MetricSpec,
    groups: NDArray[Any],
    *,
    attribute: str = "",
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    n_tests: int = 1,
    boot: SubjectBootstrap | None = None,
) -> dict[str, Any]:
    """One metric for every group of one attribute, with the max-min gap across sufficient groups.

    Intervals come from the subject-level bootstrap `boot` (rows as their own subjects when None):
    one replicate resamples subjects once for every group, so the two groups' replicates of a gap are
    drawn together. A cell's size is its number of distinct subjects (`n_subjects`; `n` counts images):
    a group of 40 photos of 10 people is a sample of 10. `significant` is a z-test on the extreme
    pair's difference with the bootstrap standard error of that difference, at level
    FAMILY_ALPHA / n_tests (Bonferroni over every pair tested in the report); percentile intervals
    are too coarse that far into the tails with 1000 replicates.
    """
    if boot is None:
        boot = SubjectBootstrap(None, spec.values.shape[0], n_boot=n_boot, seed=seed, name=attribute)
    cells: dict[str, dict[str, Any]] = {}
    reps: dict[str, FloatArray] = {}
    points: dict[str, float] = {}
    for g in sorted({str(x) for x in groups}):
        sel = (groups == g) & spec.eligible
        n = int(sel.sum())
        k = boot.n_subjects(sel) if n else 0
        if n == 0 or k < max(min_cell_size, 1):
            cells[g] = {
                "n": n,
                "n_subjects": k,
                "value": None,
                "ci": None,
                "status": "empty" if n == 0 else "insufficient",
            }
            continue
        r = boot.means(spec.values, sel)
        value = float(spec.values[sel].mean())
        ci = percentile_interval(r) or [value, value]
        cells[g] = {"n": n, "n_subjects": k, "value": value, "ci": ci, "status": "ok"}
        reps[g], points[g] = r, value
    out: dict[str, Any] = {
        "description": spec.description,
        "groups": cells,
        "gap": None,
        "gap_ci": None,
        "ratio": None,
        "max_group": None,
        "min_group": None,
        "z": None,
        "significant": False,
    }
    if len(points) < 2:
        return out
    hi = max(points, key=lambda k: points[k])
    lo = min(points, key=lambda k: points[k])
    gap = points[hi] - points[lo]
    out.update(max_group=hi, min_group=lo, gap=gap, ratio=_num(points[hi] / points[lo]) if points[lo] > 0 else None)
    diff = reps[hi] - reps[lo]
    diff = diff[np.isfinite(diff)]
    if diff.size:
        out["gap_ci"] = percentile_interval(diff)
        se = float(np.std(diff, ddof=1)) if diff.size > 1 else 0.0
        critical = NormalDist().inv_cdf(1 - FAMILY_ALPHA / (2 * max(n_tests, 1)))
        if se > 0:
            out["z"] = gap / se
            out["significant"] = bool(gap / se > critical)
        else:
            out["significant"] = gap > 0  # every resample agrees: the difference is certain
    return out


def fairness_report(
    est: Estimates,
    *,
    attributes: Sequence[str] | None = None,
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    boot: SubjectBootstrap | None = None,
) -> dict[str, Any]:
    """{attribute: {metric: group_metric(...)}} for every manifest attribute (or those named).

    One subject-level bootstrap (from `est.subject_id`, or `boot` when the caller shares one) serves
    every cell, so all intervals in a report rest on the same resampled people."""
    if boot is None:
        boot = SubjectBootstrap(est.subject_id, len(est), n_boot=n_boot, seed=seed, name="fairness")
    names = list(est.attributes) if attributes is None else list(attributes)
    specs = fairness_specs(est, confidence)
    # Bonferroni denominator: the extreme pair is picked after looking, so it counts as every pair of
    # groups of every attribute, for every metric.
    n_groups = [len({str(x) for x in est.attributes[a]}) for a in names]
    n_tests = len(specs) * sum(k * (k - 1) // 2 for k in n_groups)
    return {
        a: {
            s.name: group_metric(
                s,
                est.attributes[a],
                attribute=a,
                min_cell_size=min_cell_size,
                n_boot=n_boot,
                seed=seed,
                n_tests=n_tests,
                boot=boot,
            )
            for s in specs
        }
        for a in names
    }


def significant_gaps(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Every flagged gap, largest z first, for the report's summary."""
    flagged = [
        {
            "attribute": a,
            "metric": m,
            "gap": r["gap"],
            "gap_ci": r["gap_ci"],
            "max_group": r["max_group"],
            "min_group": r["min_group"],
            "z": r["z"],
        }
        for a, per in fairness.items()
        for m, r in per.items()
        if r.get("significant")
    ]
    return sorted(flagged, key=lambda f: -(f["z"] if f["z"] is not None else math.inf))
