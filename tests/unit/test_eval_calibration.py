"""Uncertainty metrics (NLL, interval coverage, reliability, ECE) and PSI against hand-computed values."""

from __future__ import annotations

import math

import pytest

from model.evaluation import calibration as C
from model.evaluation.drift import histogram_proportions, population_stability_index


def test_gaussian_nll_by_hand() -> None:
    assert C.gaussian_nll([0.0], [0.0], [1.0]) == pytest.approx(0.5 * math.log(2 * math.pi))
    assert C.gaussian_nll([2.0], [0.0], [1.0]) == pytest.approx(0.5 * math.log(2 * math.pi) + 2.0)
    two = C.gaussian_nll([0.0, 2.0], [0.0, 0.0], [1.0, 2.0])
    assert two == pytest.approx((0.5 * math.log(2 * math.pi) + 0.5 * math.log(8 * math.pi) + 0.5) / 2)
    assert math.isnan(C.gaussian_nll([], [], []))
    assert math.isfinite(C.gaussian_nll([1.0], [0.0], [0.0]))  # std floored, not inf


def test_coverage_by_hand() -> None:
    # z50 = 0.674, z80 = 1.282, z95 = 1.960 with std 1: errors 0.5, 1.0, 1.5, 2.5
    cov = C.coverage([0, 0, 0, 0], [0.5, 1.0, 1.5, 2.5], [1, 1, 1, 1])
    assert cov == pytest.approx({"p50": 0.25, "p80": 0.5, "p95": 0.75})
    assert all(math.isnan(v) for v in C.coverage([], [], []).values())
    bands = C.coverage_by_band([10, 30], [10.5, 33], [1, 1])
    assert bands["0-12"]["p50"] == 1.0
    assert bands["30-39"]["p95"] == 0.0
    assert bands["13-15"]["n"] == 0


def test_reliability_and_ece_by_hand() -> None:
    prob, outcome = [0.05, 0.15, 0.95, 1.0], [0, 1, 1, 1]
    bins = C.reliability_curve(prob, outcome, 10)
    assert bins[0]["n"] == 1
    assert bins[0]["observed"] == 0.0
    assert bins[0]["mean_predicted"] == pytest.approx(0.05)
    assert bins[9]["n"] == 2
    assert bins[9]["mean_predicted"] == pytest.approx(0.975)
    assert bins[5]["n"] == 0
    assert math.isnan(bins[5]["observed"])
    assert C.expected_calibration_error(prob, outcome, 10) == pytest.approx(0.0125 + 0.2125 + 0.0125)
    assert math.isnan(C.expected_calibration_error([], []))
    assert C.expected_calibration_error([1.0], [1]) == 0.0  # single, perfectly calibrated


def test_threshold_calibration_brier() -> None:
    r = C.threshold_calibration([10, 20], [0.2, 0.9], 18)
    assert r["brier"] == pytest.approx((0.04 + 0.01) / 2)
    assert r["ece"] == pytest.approx((0.2 + 0.1) / 2)


def test_psi_by_hand() -> None:
    edges = (0, 10, 20)
    assert histogram_proportions([1, 2, 15], edges).tolist() == pytest.approx([2 / 3, 1 / 3])
    assert population_stability_index([1, 15], [2, 16], edges) == pytest.approx(0.0)
    # ref 50/50, cur 75/25: (0.25 ln 1.5) + (-0.25 ln 0.5)
    psi = population_stability_index([1, 15], [1, 2, 3, 15], edges)
    assert psi == pytest.approx(0.25 * math.log(1.5) - 0.25 * math.log(0.5))
    assert math.isnan(population_stability_index([], [1], edges))
    assert population_stability_index([1], [15], edges) > 5  # disjoint: large but finite
