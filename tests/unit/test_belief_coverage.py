"""Belief interval coverage by number of fused events (stream/core/belief_coverage.py)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from stream.core.belief_coverage import FUSED_COUNTS, belief_coverage, interval_shares, probability_reliability


def people(n: int, offset_sd: float, noise_sd: float, images: int, seed: int = 0) -> dict[str, list]:
    """Subjects whose every photo shares one look-older/younger offset, plus independent noise."""
    rng = np.random.default_rng(seed)
    frame_std = math.hypot(offset_sd, noise_sd)  # a calibrated frame std
    out = {}
    for i in range(n):
        age = float(rng.uniform(10, 40))
        offset = float(rng.normal(0, offset_sd))
        out[f"s{i}"] = [(age, age + offset + float(rng.normal(0, noise_sd)), frame_std) for _ in range(images)]
    return out


def test_with_the_true_floor_every_count_is_near_nominal() -> None:
    report = belief_coverage(people(3000, offset_sd=2.0, noise_sd=1.5, images=max(FUSED_COUNTS)), floor=2.0)
    for n in FUSED_COUNTS:
        cell = report["by_fused_count"][str(n)]
        assert cell["subjects"] == 3000
        for level, share in cell["coverage"].items():
            assert abs(share - float(level)) < 0.03, (n, level, share)
    assert abs(report["frame"]["coverage"]["0.90"] - 0.90) < 0.02


def test_without_a_floor_many_photos_grow_overconfident() -> None:
    """What independent fusion did: at 16 photos the 90% interval holds the truth far less often."""
    report = belief_coverage(people(2000, offset_sd=2.0, noise_sd=1.5, images=16), floor=1e-6)
    assert report["by_fused_count"]["16"]["coverage"]["0.90"] < 0.6
    assert abs(report["by_fused_count"]["1"]["coverage"]["0.90"] - 0.90) < 0.03  # one photo is still honest


def test_counts_use_only_subjects_with_enough_images() -> None:
    subjects = {"a": [(20.0, 21.0, 2.0)] * 2, "b": [(30.0, 29.0, 2.0)] * 8}
    report = belief_coverage(subjects, floor=1.5)
    assert [report["by_fused_count"][str(n)]["subjects"] for n in FUSED_COUNTS] == [2, 2, 1, 1, 0, 0]
    assert report["by_fused_count"]["16"]["coverage"]["0.50"] is None


def test_interval_shares_counts_inside_the_central_interval() -> None:
    assert interval_shares([0.0, 0.5, 1.0, 3.0]) == {"0.50": 0.5, "0.80": 0.75, "0.90": 0.75, "0.95": 0.75}


def test_probability_reliability_bins_what_was_said_against_what_was_true() -> None:
    judged = [(0.99, True), (0.995, False), (1.0, True), (0.6, True), (0.6, False), (0.01, False)]
    bins = {(b["lo"], b["hi"]): b for b in probability_reliability(judged)}
    top = bins[(0.99, 1.0)]
    assert top["n"] == 3  # 0.99, 0.995 and P = 1 itself
    assert top["observed"] == pytest.approx(2 / 3)
    assert top["mean_p"] == pytest.approx((0.99 + 0.995 + 1.0) / 3)
    assert bins[(0.5, 0.8)]["observed"] == 0.5
    assert bins[(0.0, 0.05)]["observed"] == 0.0
    assert bins[(0.2, 0.5)] == {"lo": 0.2, "hi": 0.5, "n": 0, "mean_p": None, "observed": None}
    assert sum(b["n"] for b in bins.values()) == len(judged)


def test_an_honest_probability_is_reliable_in_every_bin() -> None:
    """Beliefs N(mean, 2) around true ages: the stated P(age >= 18) comes true as often as it says."""
    rng = np.random.default_rng(4)
    ages = rng.uniform(10, 30, 40000)
    means = ages + rng.normal(0, 2.0, ages.size)
    stated = [1 - NormalDist(m, 2.0).cdf(18.0) for m in means]
    for b in probability_reliability(list(zip(stated, (ages >= 18).tolist(), strict=True))):
        assert b["n"] > 300
        assert abs(b["observed"] - b["mean_p"]) < 0.04, b
