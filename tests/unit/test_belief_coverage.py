"""Belief interval coverage by number of fused events (stream/core/belief_coverage.py)."""

from __future__ import annotations

import math

import numpy as np

from stream.core.belief_coverage import FUSED_COUNTS, belief_coverage, interval_shares


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
    report = belief_coverage(people(3000, offset_sd=2.0, noise_sd=1.5, images=16), floor=2.0)
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
    assert [report["by_fused_count"][str(n)]["subjects"] for n in FUSED_COUNTS] == [2, 2, 1, 1, 0]
    assert report["by_fused_count"]["16"]["coverage"]["0.50"] is None


def test_interval_shares_counts_inside_the_central_interval() -> None:
    assert interval_shares([0.0, 0.5, 1.0, 3.0]) == {"0.50": 0.5, "0.80": 0.75, "0.90": 0.75, "0.95": 0.75}
