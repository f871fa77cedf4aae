"""Subject-level (cluster) bootstrap: weights, intervals that respect persistent per-person error,
subject counts in fairness cells, and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.bootstrap import SubjectBootstrap, estimate, percentile_interval
from model.evaluation.fairness import MetricSpec, fairness_report, group_metric
from model.evaluation.metrics import Estimates


def _clustered(n_subjects: int = 200, per: int = 5, subject_sd: float = 3.0, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subjects), per)
    offset = rng.normal(0, subject_sd, n_subjects)[subj]  # shared by every image of a person
    values = offset + rng.normal(0, 0.5, subj.size)
    return values, np.asarray([f"s{i}" for i in subj], dtype=object)


def test_weights_count_subject_draws_and_keep_images_together() -> None:
    ids = ["a", "a", "b", "c", "c", "c"]
    boot = SubjectBootstrap(ids, 6, n_boot=50, seed=3)
    w = boot.weights
    assert w.shape == (50, 6)
    # every image of one subject carries the same weight in every replicate
    assert np.all(w[:, 0] == w[:, 1])
    assert np.all(w[:, 3] == w[:, 4])
    assert np.all(w[:, 4] == w[:, 5])
    # each replicate draws exactly as many subjects as there are
    per_subject = w[:, [0, 2, 3]]
    assert np.all(per_subject.sum(axis=1) == 3)
    assert boot.n_subjects() == 3
    assert boot.n_subjects(np.asarray([True, True, False, False, False, False])) == 1


def test_means_are_weighted_replicates_and_point_estimate_is_inside() -> None:
    values, ids = _clustered()
    boot = SubjectBootstrap(ids, values.size, n_boot=400, seed=1)
    reps = boot.means(values)
    w = boot.weights[7]
    assert reps[7] == pytest.approx(float((w * values).sum() / w.sum()))
    ci = percentile_interval(reps)
    assert ci is not None
    lo, hi = ci
    assert lo < values.mean() < hi


def test_cluster_interval_is_wider_than_image_interval_when_subjects_share_error() -> None:
    values, ids = _clustered(subject_sd=3.0)
    by_subject = estimate(SubjectBootstrap(ids, values.size, n_boot=500, seed=0), values)
    by_image = estimate(SubjectBootstrap(None, values.size, n_boot=500, seed=0), values)
    width = lambda c: c["ci"][1] - c["ci"][0]  # noqa: E731
    # 5 images per person with a 3-year shared offset: the design effect is about sqrt(5)
    assert width(by_subject) > 1.7 * width(by_image)
    assert (by_subject["n_subjects"], by_subject["n_images"]) == (200, 1000)
    assert (by_image["n_subjects"], by_image["n_images"]) == (1000, 1000)


def test_cluster_interval_covers_the_truth_at_nominal_rate() -> None:
    """Across independent samples, the subject-level 95% interval holds the true mean (0) about 95% of the
    time; the image-level one would cover far less with this much shared error."""
    hits = 0
    trials = 60
    for s in range(trials):
        values, ids = _clustered(n_subjects=60, per=5, seed=100 + s)
        ci = estimate(SubjectBootstrap(ids, values.size, n_boot=300, seed=s), values)["ci"]
        hits += ci[0] <= 0.0 <= ci[1]
    assert hits / trials >= 0.85


def test_empty_population_and_reproducibility() -> None:
    boot = SubjectBootstrap(["a", "b"], 2, n_boot=10, seed=0)
    cell = estimate(boot, [1.0, 2.0], [False, False])
    assert cell == {"value": None, "ci": None, "n_subjects": 0, "n_images": 0}
    a = SubjectBootstrap(["a", "b", "c"], 3, n_boot=20, seed=5).weights
    b = SubjectBootstrap(["a", "b", "c"], 3, n_boot=20, seed=5).weights
    assert np.array_equal(a, b)
    assert not np.array_equal(a, SubjectBootstrap(["a", "b", "c"], 3, n_boot=20, seed=6).weights)


def test_min_cell_size_counts_subjects_not_images() -> None:
    values = np.arange(8, dtype=float)
    groups = np.asarray(["a"] * 4 + ["b"] * 4, dtype=object)
    ids = np.asarray(["p1"] * 4 + ["q1", "q2", "q3", "q4"], dtype=object)
    boot = SubjectBootstrap(ids, 8, n_boot=50, seed=0)
    r = group_metric(MetricSpec("m", values, np.ones(8, dtype=bool), "t"), groups, min_cell_size=2, boot=boot)
    assert r["groups"]["a"]["status"] == "insufficient"  # 4 photos of one person
    assert (r["groups"]["a"]["n"], r["groups"]["a"]["n_subjects"]) == (4, 1)
    assert r["groups"]["b"]["status"] == "ok"


def test_fairness_bias_test_uses_subjects() -> None:
    """A group difference made only of a few people's persistent offsets is not significant once the
    bootstrap resamples people; resampling images would call it significant."""
    rng = np.random.default_rng(4)
    n_subj, per = 40, 10
    subj = np.repeat(np.arange(n_subj), per)
    group = np.where(subj % 2 == 0, "x", "y")
    t = rng.uniform(10, 40, subj.size)
    offset = rng.normal(0, 3, n_subj)[subj]
    p = t + offset + rng.normal(0, 0.3, subj.size)
    ids = [f"s{i}" for i in subj]
    by_subject = fairness_report(
        Estimates.build(t, p, np.full(subj.size, 3.0), {"g": group}, subject_id=ids), n_boot=400, min_cell_size=5
    )
    by_image = fairness_report(
        Estimates.build(t, p, np.full(subj.size, 3.0), {"g": group}), n_boot=400, min_cell_size=5
    )
    z_subject = by_subject["g"]["mean_signed_error"]["z"]
    z_image = by_image["g"]["mean_signed_error"]["z"]
    assert z_subject is not None
    assert z_image is not None
    assert abs(z_subject) < abs(z_image) / 2
