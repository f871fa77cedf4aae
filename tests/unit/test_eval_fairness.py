"""Per-group metrics: hand values, minimum cell size, empty and single-element groups, bias detection."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.fairness import MetricSpec, fairness_report, group_metric, significant_gaps
from model.evaluation.metrics import Estimates


def spec(values: list[float], eligible: list[bool] | None = None) -> MetricSpec:
    v = np.asarray(values, dtype=float)
    e = np.ones_like(v, dtype=bool) if eligible is None else np.asarray(eligible)
    return MetricSpec("m", v, e, "test metric")


GROUPS = np.asarray(["a", "a", "a", "b", "b"], dtype=object)


def test_group_values_gap_and_ratio_by_hand() -> None:
    r = group_metric(spec([1, 2, 3, 10, 20]), GROUPS, min_cell_size=2, n_boot=200)
    assert r["groups"]["a"]["value"] == pytest.approx(2.0)
    assert r["groups"]["a"]["n"] == 3
    assert r["groups"]["b"]["value"] == pytest.approx(15.0)
    assert r["gap"] == pytest.approx(13.0)
    assert r["ratio"] == pytest.approx(7.5)
    assert (r["max_group"], r["min_group"]) == ("b", "a")
    lo, hi = r["groups"]["a"]["ci"]
    assert 1.0 <= lo <= 2.0 <= hi <= 3.0  # a bootstrap mean of {1,2,3} stays within its range


def test_min_cell_size_marks_insufficient_and_drops_from_gap() -> None:
    r = group_metric(spec([1, 2, 3, 10, 20]), GROUPS, min_cell_size=3, n_boot=50)
    assert r["groups"]["b"] == {"n": 2, "n_subjects": 2, "value": None, "ci": None, "status": "insufficient"}
    assert r["groups"]["a"]["status"] == "ok"
    assert r["gap"] is None
    assert r["significant"] is False


def test_empty_group_after_eligibility() -> None:
    r = group_metric(spec([1, 2, 3, 10, 20], [True, True, True, False, False]), GROUPS, min_cell_size=1, n_boot=50)
    assert r["groups"]["b"]["status"] == "empty"
    assert r["groups"]["b"]["n"] == 0
    assert r["gap"] is None


def test_single_element_groups() -> None:
    r = group_metric(spec([4.0, 7.0]), np.asarray(["x", "y"], dtype=object), min_cell_size=1, n_boot=100)
    assert r["groups"]["x"] == {"n": 1, "n_subjects": 1, "value": 4.0, "ci": [4.0, 4.0], "status": "ok"}
    assert r["gap"] == pytest.approx(3.0)
    assert r["gap_ci"] == pytest.approx([3.0, 3.0])
    assert r["significant"] is True  # no sampling variance at all: the difference is certain
    same = group_metric(spec([4.0, 4.0]), np.asarray(["x", "y"], dtype=object), min_cell_size=1, n_boot=100)
    assert same["gap"] == 0.0
    assert same["significant"] is False
    assert same["ratio"] == 1.0


def test_ratio_undefined_when_min_is_zero() -> None:
    r = group_metric(spec([0, 0, 1, 1]), np.asarray(["a", "a", "b", "b"], dtype=object), min_cell_size=1, n_boot=20)
    assert r["ratio"] is None
    assert r["gap"] == 1.0


def test_bootstrap_is_reproducible() -> None:
    a = group_metric(spec([1, 2, 3, 10, 20]), GROUPS, min_cell_size=1, n_boot=100, seed=7)
    b = group_metric(spec([1, 2, 3, 10, 20]), GROUPS, min_cell_size=1, n_boot=100, seed=7)
    assert a == b


def _population(bias: float, seed: int = 0) -> Estimates:
    rng = np.random.default_rng(seed)
    n = 3000
    t = rng.uniform(8, 40, n)
    tone = rng.choice(["light", "medium", "dark"], n)
    sex = rng.choice(["F", "M"], n)
    p = t + rng.normal(0, 3, n) + np.where(tone == "dark", bias, 0.0)
    return Estimates.build(t, p, np.full(n, 3.0), {"skin_tone": tone, "sex": sex})


def test_injected_bias_is_flagged_for_that_group_only() -> None:
    flagged = significant_gaps(fairness_report(_population(bias=3.0), n_boot=300))
    assert flagged, "a 3-year bias on one group must be flagged"
    assert {f["attribute"] for f in flagged} == {"skin_tone"}
    signed = next(f for f in flagged if f["metric"] == "mean_signed_error")
    assert signed["max_group"] == "dark"
    assert signed["gap"] == pytest.approx(3.0, abs=0.5)
    assert signed["gap_ci"][0] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unbiased_population_flags_nothing(seed: int) -> None:
    assert significant_gaps(fairness_report(_population(bias=0.0, seed=seed), n_boot=300)) == []
