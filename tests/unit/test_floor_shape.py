"""The floor's shape: a two-component scale mixture for the person-level error, its tail, its inverse,
and `decide` judging with it."""

from __future__ import annotations

import math
from itertools import pairwise
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.belief import (
    GAUSSIAN_FLOOR,
    YEAR_S,
    Belief,
    FloorShape,
    belief_interval,
    belief_quantile,
    p_at_least,
    p_at_least_shaped,
)
from stream.core.belief_coverage import belief_cdf_at, belief_coverage, cdf_shares
from stream.core.policy import Action, PolicyEvent, decide, load_policy

POLICY = load_policy()
NOW = 1_750_000_000.0
HL = POLICY.half_life_s

weights = st.floats(min_value=0.05, max_value=0.95)
narrows = st.floats(min_value=0.2, max_value=0.95)
means = st.floats(min_value=5.0, max_value=60.0)
ivars = st.floats(min_value=0.01, max_value=9.0)
floors = st.floats(min_value=0.3, max_value=5.0)


def test_mixture_keeps_the_floor_as_its_second_moment() -> None:
    shape = FloorShape.mixture(0.6, 0.5)
    assert shape.narrow == 0.5
    assert shape.weight * shape.narrow**2 + (1 - shape.weight) * shape.wide**2 == pytest.approx(1.0)
    assert shape.wide > 1.0
    assert FloorShape.mixture(1.0, 0.5) == GAUSSIAN_FLOOR
    with pytest.raises(ValueError, match="second moment"):
        FloorShape(0.5, 0.5, 1.1)
    with pytest.raises(ValueError, match="invalid floor shape"):
        FloorShape(0.5, 1.2, 0.7)


@given(means, ivars, floors, st.floats(min_value=0.0, max_value=80.0))
def test_the_gaussian_shape_is_the_plain_gaussian_tail(mean: float, ivar: float, floor: float, t: float) -> None:
    shaped = p_at_least_shaped(mean, ivar, floor, t, GAUSSIAN_FLOOR)
    assert shaped == pytest.approx(p_at_least(mean, math.sqrt(ivar + floor * floor), t), abs=1e-15)


@given(weights, narrows, means, ivars, floors)
def test_the_tail_falls_as_the_threshold_rises(w: float, r: float, mean: float, ivar: float, floor: float) -> None:
    shape = FloorShape.mixture(w, r)
    ps = [p_at_least_shaped(mean, ivar, floor, t, shape) for t in np.linspace(mean - 20, mean + 20, 81)]
    assert all(a >= b for a, b in pairwise(ps))
    assert ps[0] > 0.99
    assert ps[-1] < 0.01
    assert p_at_least_shaped(mean, ivar, floor, mean, shape) == pytest.approx(0.5)  # symmetric around the mean


def test_the_tail_matches_a_monte_carlo_estimate() -> None:
    rng = np.random.default_rng(3)
    shape, mean, ivar, floor, n = FloorShape.mixture(0.4, 0.45), 19.0, 0.5, 3.0, 400_000
    narrow = rng.random(n) < shape.weight
    person = rng.normal(0.0, floor, n) * np.where(narrow, shape.narrow, shape.wide)
    ages = mean + person + rng.normal(0.0, math.sqrt(ivar), n)
    for t in (12.0, 16.0, 18.0, 21.0, 25.0, 28.0):
        expected = float(np.mean(ages >= t))
        assert p_at_least_shaped(mean, ivar, floor, t, shape) == pytest.approx(expected, abs=0.003)


@given(weights, narrows, means, ivars, floors, st.floats(min_value=0.01, max_value=0.99))
def test_the_quantile_inverts_the_cdf(w: float, r: float, mean: float, ivar: float, floor: float, q: float) -> None:
    shape = FloorShape.mixture(w, r)
    a = belief_quantile(q, mean, ivar, floor, shape)
    assert 1.0 - p_at_least_shaped(mean, ivar, floor, a, shape) == pytest.approx(q, abs=1e-7)


@given(means, ivars, floors, st.sampled_from([0.5, 0.8, 0.9, 0.95]))
def test_the_gaussian_interval_is_mean_plus_minus_z_std(mean: float, ivar: float, floor: float, level: float) -> None:
    lo, hi = belief_interval(level, mean, ivar, floor, GAUSSIAN_FLOOR)
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(ivar + floor * floor)
    assert lo == pytest.approx(mean - half, abs=1e-6)
    assert hi == pytest.approx(mean + half, abs=1e-6)


def test_a_heavier_tail_widens_the_95_interval_and_narrows_the_50() -> None:
    shape = FloorShape.mixture(0.38, 0.52)  # about what the demo model's calibration finds
    g50, m50 = (belief_interval(0.5, 20.0, 0.01, 3.0, s) for s in (GAUSSIAN_FLOOR, shape))
    g99, m99 = (belief_interval(0.99, 20.0, 0.01, 3.0, s) for s in (GAUSSIAN_FLOOR, shape))
    assert m50[1] - m50[0] < g50[1] - g50[0]
    assert m99[1] - m99[0] > g99[1] - g99[0]


def _belief(age: float, ivar: float, floor: float, observations: int = 10) -> Belief:
    return Belief(NOW - age * YEAR_S, 1.0 / ivar, NOW, observations, False, "m", floor)


def test_decide_judges_with_the_shape() -> None:
    # DEFAULT adult content: ALLOW needs P(age >= 18 + 2) >= 0.95. A belief 1.7 floors above 20: the
    # Gaussian gives P = 0.955 (ALLOW); a shape with 70% of its people in a wider component gives
    # P ~ 0.948, short of 0.95 (REQUIRE_VERIFICATION).
    belief = _belief(20.0 + 1.7 * 2.0, 1e-6, 2.0)
    event = PolicyEvent("DEFAULT", "adult_content", NOW)
    heavy = FloorShape.mixture(0.3, 0.3)
    gaussian = decide(belief, event, POLICY, now=NOW)
    shaped = decide(belief, event, POLICY, now=NOW, floor_shape=heavy)
    assert gaussian.action is Action.ALLOW
    assert shaped.action is Action.REQUIRE_VERIFICATION
    assert shaped.evidence.p_at_least_threshold_plus_buffer is not None
    assert (
        shaped.evidence.p_at_least_threshold_plus_buffer
        < 0.95
        < (gaussian.evidence.p_at_least_threshold_plus_buffer or 0.0)
    )
    assert shaped.evidence.age_std == gaussian.evidence.age_std  # the reported std is the second moment either way
    # The same P that decide used is the belief's own.
    p_buf = shaped.evidence.p_at_least_threshold_plus_buffer
    assert belief.p_age_at_least(20.0, NOW, HL, heavy) == pytest.approx(p_buf)


def test_cdf_shares_count_the_central_intervals() -> None:
    assert cdf_shares([0.5, 0.2, 0.02, 0.97]) == {"0.50": 0.25, "0.80": 0.5, "0.90": 0.5, "0.95": 0.75}
    belief = _belief(20.0, 0.25, 2.0)
    lo, hi = belief_interval(0.9, 20.0, 0.25, 2.0, FloorShape.mixture(0.5, 0.4))
    for age, inside in ((lo + 1e-6, True), (hi - 1e-6, True), (lo - 1e-3, False), (hi + 1e-3, False)):
        u = belief_cdf_at(belief, age, NOW, HL, FloorShape.mixture(0.5, 0.4))
        assert (abs(u - 0.5) <= 0.45) is inside


def test_belief_coverage_with_the_true_shape_is_nominal_where_the_gaussian_is_not() -> None:
    rng = np.random.default_rng(5)
    shape, floor = FloorShape.mixture(0.5, 0.4), 2.0
    subjects: dict[str, list[tuple[float, float, float]]] = {}
    for i in range(3000):
        offset = rng.normal(0.0, floor * (shape.narrow if rng.random() < shape.weight else shape.wide))
        ages = rng.uniform(12, 40) + np.arange(16) * 0.01
        # Each frame's calibrated std covers its whole error: the person's part (floor) and its own noise.
        subjects[f"s{i}"] = [(float(a), float(a + offset + rng.normal(0, 1.0)), math.hypot(floor, 1.0)) for a in ages]
    gaussian = belief_coverage(subjects, floor=floor, counts=(16,))["by_fused_count"]["16"]["coverage"]
    shaped = belief_coverage(subjects, floor=floor, counts=(16,), floor_shape=shape)["by_fused_count"]["16"]["coverage"]
    assert gaussian["0.50"] > 0.55  # the leptokurtic error over-covers the centre under a Gaussian
    for level, share in shaped.items():
        assert share == pytest.approx(float(level), abs=0.025)
