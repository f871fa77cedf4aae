"""Accuracy, threshold and NIST metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluation import metrics as M

T = [10.0, 17.0, 19.0, 30.0]
P = [12.0, 19.0, 18.0, 33.0]  # errors +2, +2, -1, +3


def test_accuracy_by_hand() -> None:
    assert M.mae(T, P) == pytest.approx(2.0)
    assert M.mean_signed_error(T, P) == pytest.approx(1.5)
    assert M.rmse(T, P) == pytest.approx(math.sqrt(18 / 4))
    assert M.cs_at_k(T, P, 1) == pytest.approx(0.25)
    assert M.cs_at_k(T, P, 2) == pytest.approx(0.75)  # inclusive: |2| <= 2
    assert M.cs_at_k(T, P, 3) == pytest.approx(1.0)
    s = M.accuracy_summary(T, P)
    assert s["n"] == 4
    assert s["cs_10"] == 1.0
    assert s["cs_1"] == pytest.approx(0.25)


def test_empty_and_single_element() -> None:
    for f in (M.mae, M.mean_signed_error, M.rmse):
        assert math.isnan(f([], []))
    assert math.isnan(M.cs_at_k([], [], 5))
    assert M.mae([5.0], [7.0]) == 2.0
    assert M.mean_signed_error([5.0], [3.0]) == -2.0
    assert M.rmse([5.0], [8.0]) == 3.0
    assert math.isnan(M.accuracy_summary([], [])["mae"])
    assert M.accuracy_summary([], [])["n"] == 0


def test_by_band_and_year_report_empty_cells() -> None:
    bands = M.by_age_band(T, P)
    assert bands["0-12"]["n"] == 1
    assert bands["0-12"]["mae"] == pytest.approx(2.0)
    assert bands["13-15"]["n"] == 0
    assert math.isnan(bands["13-15"]["mae"])
    assert bands["30-39"]["mae"] == pytest.approx(3.0)
    years = M.by_single_year(T, P)
    assert set(years) >= {str(y) for y in range(6, 31)}
    assert years["17"]["mae"] == pytest.approx(2.0)
    assert years["6"]["n"] == 0
    assert years["19"]["mean_signed_error"] == pytest.approx(-1.0)
    assert M.by_single_year([17.9], [17.0])["17"]["n"] == 1  # floored, the legal convention


def test_threshold_rates_with_buffers() -> None:
    # minors (t < 18): 10 -> 12, 17 -> 19. 18-20 year-olds: 19 -> 18.
    assert M.under_age_pass_rate(T, P, 18, 0) == pytest.approx(0.5)
    assert M.under_age_pass_rate(T, P, 18, 1) == pytest.approx(0.5)  # 19 >= 19
    assert M.under_age_pass_rate(T, P, 18, 2) == 0.0
    assert M.false_rejection_rate(T, P, 18, 0) == 0.0  # 18 >= 18 passes
    assert M.false_rejection_rate(T, P, 18, 1) == 1.0
    assert math.isnan(M.false_rejection_rate(T, P, 13, 0))  # nobody aged 13-15
    by_year = M.under_age_pass_rate_by_year(T, P, 18, 0, youngest=10)
    assert list(by_year) == [str(y) for y in range(10, 18)]
    assert by_year["10"] == 0.0
    assert by_year["17"] == 1.0
    assert math.isnan(by_year["11"])


def test_uncertainty_rule_three_way() -> None:
    o = M.uncertainty_rule([0.99, 0.5, 0.01, 0.95, 0.04], 0.95)
    assert o.passed.tolist() == [True, False, False, True, False]
    assert o.rejected.tolist() == [False, False, True, False, True]
    assert o.fallback.tolist() == [False, True, False, False, False]
    r = M.uncertainty_rule_rates([10, 17, 18.5, 19, 30], [0.01, 0.5, 0.99, 0.3, 0.999], 18, 0.95)
    assert r["under_age_pass_rate"] == 0.0
    assert r["false_rejection_rate"] == 0.0
    assert r["fallback_rate"] == pytest.approx(0.4)
    assert r["fallback_rate_under_age"] == pytest.approx(0.5)
    assert r["fallback_rate_near_adults"] == pytest.approx(0.5)
    assert r["pass_rate"] == pytest.approx(0.4)
    empty = M.uncertainty_rule_rates([], [], 18)
    assert math.isnan(empty["fallback_rate"])


def test_prob_at_least_gaussian_and_buckets() -> None:
    assert M.gaussian_prob_at_least([20.0], [2.0], 18)[0] == pytest.approx(0.8413447, abs=1e-6)
    assert M.gaussian_prob_at_least([18.0], [5.0], 18)[0] == pytest.approx(0.5)
    assert M.gaussian_prob_at_least([17.0, 19.0], [0.0, 0.0], 18).tolist() == [0.0, 1.0]  # no std: a step
    est = M.Estimates.build([20.0], [20.0], [2.0], bucket_probs=[[0.1, 0.2, 0.3, 0.25, 0.15]])
    assert M.prob_at_least(est, 18)[0] == pytest.approx(0.4)  # 18-24 + 25+
    assert M.prob_at_least(est, 16)[0] == pytest.approx(0.7)
    assert M.prob_at_least(est, 21)[0] == pytest.approx(0.3085375, abs=1e-6)  # not an edge: Gaussian, 1-Phi(0.5)


def test_threshold_metrics_structure() -> None:
    est = M.Estimates.build(T, P, [1.0] * 4)
    tm = M.threshold_metrics(est, thresholds=(18,), buffers=(0, 3))
    assert tm["18"]["buffers"]["0"]["under_age_pass_rate"] == pytest.approx(0.5)
    assert tm["18"]["buffers"]["3"]["cutoff"] == 21.0
    assert tm["18"]["buffers"]["3"]["false_rejection_rate"] == 1.0
    assert 0.0 <= tm["18"]["uncertainty_rule"]["fallback_rate"] <= 1.0


def test_nist_rates_by_hand() -> None:
    assert M.challenge_25_rate([16, 17, 17.5, 30], [26, 20, 25, 40]) == pytest.approx(2 / 3)
    assert math.isnan(M.challenge_25_rate([30], [40]))
    t = [8.5, 12, 13, 16.9, 17, 22.9, 23, 40]
    p = [13.5, 12, 15, 17.0, 16.99, 14, 14, 14]
    r = M.child_online_safety_rates(t, p)
    assert r == pytest.approx({"tpr_13_16": 0.5, "fpr_8_12": 0.5, "fpr_17_22": 1.0})
    assert all(math.isnan(v) for v in M.child_online_safety_rates([], []).values())


def test_estimates_validation_and_subset() -> None:
    with pytest.raises(ValueError, match="align"):
        M.Estimates.build([1, 2], [1], [1, 1])
    with pytest.raises(ValueError, match="attribute"):
        M.Estimates.build([1, 2], [1, 2], None, {"sex": ["F"]})
    est = M.Estimates.build([1, 2, 3], [1, 2, 4], None, {"sex": ["F", "M", "F"]}, subject_id=["a", "b", "c"])
    assert np.isnan(est.std).all()
    sub = est.subset(est.attributes["sex"] == "F")
    assert sub.true_age.tolist() == [1.0, 3.0]
    assert sub.subject_id is not None
    assert sub.subject_id.tolist() == ["a", "c"]
