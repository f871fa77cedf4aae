"""Definitions (NIST Challenge-25 variants, Challenge-T false negatives), per-year cells, operating
curves and matched operating points, on hand-made arrays with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluation import metrics as M
from model.evaluation.bootstrap import SubjectBootstrap
from model.evaluation.operating import challenge_age_for_fpr, cutoff_for_rate, matched_point, operating_report
from model.evaluation.subject_stats import by_year_cells, headline_cells


def test_challenge_25_populations_differ_as_defined() -> None:
    true = [8, 10, 14, 15.5, 17.9, 30, 26, 40]
    est = [26, 27, 20, 25, 24, 24, 30, 41]
    # NIST: 14-17 estimated >= 25 -> 15.5 only, of three teens
    assert M.challenge_fpr(true, est, 25) == pytest.approx(1 / 3)
    # all under 18 -> 8, 10, 15.5 of five minors
    assert M.challenge_fpr_under_18(true, est, 25) == pytest.approx(3 / 5)
    assert M.challenge_25_rate(true, est) == pytest.approx(3 / 5)
    # adults 25+ estimated under 25: the 30-year-old estimated 24, of three
    assert M.challenge_fnr(true, est, 25) == pytest.approx(1 / 3)
    nist = M.nist_metrics(true, est)
    assert nist["challenge_25_fpr_14_17"] == pytest.approx(1 / 3)
    assert nist["challenge_25_fpr_under_18"] == pytest.approx(3 / 5)
    assert nist["challenge_25_fnr_25_plus"] == pytest.approx(1 / 3)
    assert math.isnan(M.challenge_fpr([30], [40], 25))
    assert set(M.challenge_metrics(true, est)) == {"21", "23", "25"}


def test_per_year_cells_have_counts_and_intervals() -> None:
    t = np.asarray([10.2, 10.5, 17.1, 17.3, 17.9, 18.0, 19.5, 22.0])
    m = np.asarray([9.0, 19.0, 18.5, 16.0, 21.5, 17.0, 22.0, 25.0])
    ids = ["a", "a", "b", "c", "c", "d", "e", "f"]
    est = M.Estimates.build(t, m, np.full(8, 2.0), subject_id=ids)
    cells = by_year_cells(est, SubjectBootstrap(ids, 8, n_boot=50), thresholds=(18,), buffers=(0, 3))
    y17 = cells["18"]["0"]["under_age_pass"]["17"]
    assert (y17["value"], y17["n_images"], y17["n_subjects"]) == (pytest.approx(2 / 3), 3, 2)
    assert 0.0 <= y17["ci"][0] <= y17["ci"][1] <= 1.0
    assert cells["18"]["3"]["under_age_pass"]["17"]["value"] == pytest.approx(1 / 3)  # only 21.5 >= 21
    assert list(cells["18"]["0"]["under_age_pass"]) == [str(y) for y in range(10, 18)]
    assert list(cells["18"]["0"]["false_rejection"]) == [str(y) for y in range(18, 23)]
    assert cells["18"]["0"]["false_rejection"]["18"]["value"] == pytest.approx(1.0)  # 18.0 estimated 17
    assert cells["18"]["3"]["false_rejection"]["19"]["value"] == pytest.approx(0.0)
    assert cells["18"]["0"]["under_age_pass"]["12"] == {"value": None, "ci": None, "n_subjects": 0, "n_images": 0}


def test_cutoff_for_rate_is_the_strictest_needed() -> None:
    scores = np.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    w = np.ones(10)
    c = cutoff_for_rate(scores, w, 0.2)[0]
    assert 8.0 < c <= 8.0 + 1e-9  # 9 and 10 pass: exactly 20%
    assert np.mean(scores >= c) <= 0.2
    c0 = cutoff_for_rate(scores, w, 0.0)[0]
    assert c0 > 10.0
    assert np.mean(scores >= c0) == 0.0
    # ties are excluded together rather than split
    tied = np.asarray([5.0, 5.0, 5.0, 1.0])
    assert np.mean(tied >= cutoff_for_rate(tied, np.ones(4), 0.5)[0]) == 0.0
    assert math.isnan(cutoff_for_rate(scores, np.zeros(10), 0.1)[0])


def test_matched_point_compares_models_at_the_same_minor_pass_rate() -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(8, 30, 4000)
    tight = t + rng.normal(0, 1.5, t.size)
    loose = t + rng.normal(0, 4.0, t.size)
    c_tight, rej_tight = matched_point(tight - 18, t, 18, 0.01)
    c_loose, rej_loose = matched_point(loose - 18, t, 18, 0.01)
    minors = t < 18
    assert np.mean(tight[minors] - 18 >= c_tight[0]) <= 0.01
    assert np.mean(loose[minors] - 18 >= c_loose[0]) <= 0.01
    assert c_loose[0] > c_tight[0]  # the noisier model needs a bigger buffer
    assert rej_loose[0] > rej_tight[0] + 0.1  # and refuses more 18-20-year-olds for it
    # weights: doubling every weight changes nothing
    c2, r2 = matched_point(tight - 18, t, 18, 0.01, np.full((1, t.size), 2.0))
    assert (c2[0], r2[0]) == (pytest.approx(c_tight[0]), pytest.approx(rej_tight[0]))


def test_challenge_age_for_fpr_reaches_target() -> None:
    rng = np.random.default_rng(1)
    t = rng.uniform(14, 18, 2000)
    m = t + rng.normal(0, 3, t.size)
    c = challenge_age_for_fpr(m, t, 0.01)[0]
    assert np.mean(m >= c) <= 0.01 < np.mean(m >= c - 0.2)


def test_operating_report_has_curves_matched_points_and_intervals() -> None:
    rng = np.random.default_rng(2)
    n = 1200
    t = rng.uniform(8, 40, n)
    m = t + rng.normal(0, 2.5, n)
    ids = [f"s{i // 4}" for i in range(n)]
    est = M.Estimates.build(t, m, np.full(n, 2.5), subject_id=ids)
    boot = SubjectBootstrap(ids, n, n_boot=200, seed=0)
    rep = operating_report(est, boot, thresholds=(18,))
    curve = rep["18"]["curve_buffer"]
    passes = [p["under_age_pass_rate"] for p in curve]
    rejects = [p["legal_age_rejection_rate"] for p in curve]
    assert passes == sorted(passes, reverse=True)
    assert rejects == sorted(rejects)
    cell = rep["18"]["matched"]["0.01"]
    lo, hi = cell["legal_age_rejection_rate"]["ci"]
    assert lo <= cell["legal_age_rejection_rate"]["value"] <= hi
    # constant std: mean - k*std >= 18 is the buffer rule with buffer = k*std, same matched rejection
    assert cell["k_std"]["k"] * 2.5 == pytest.approx(cell["buffer"])
    matched_k = cell["k_std"]["legal_age_rejection_rate"]["value"]
    assert matched_k == pytest.approx(cell["legal_age_rejection_rate"]["value"])
    age = rep["challenge_age_for_fpr"]["0.01"]
    assert age["ci"][0] <= age["value"] <= age["ci"][1]
    cells = headline_cells(est, boot)
    assert cells["challenge_25_fpr_14_17"]["n_subjects"] < cells["challenge_25_fpr_14_17"]["n_images"]
