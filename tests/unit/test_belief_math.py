"""Properties of the pure belief math (stream/core/belief.py)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.belief import (
    MIN_STD_YEARS,
    VERIFIED_PRECISION,
    YEAR_S,
    Belief,
    ClockSkewRule,
    Evidence,
    RefusalReason,
    apply_verified,
    decay,
    fuse,
    verified_refusal,
)

FLOOR = 0.0  # the pure fusion arithmetic; the floor has its own tests
NOW = 1_750_000_000.0
DAY = 86400.0
HALF_LIFE = 365 * DAY
NO_DECAY = math.inf

ages = st.floats(min_value=1.0, max_value=90.0)
stds = st.floats(min_value=0.5, max_value=8.0)
offsets = st.floats(min_value=0.0, max_value=300 * DAY)  # how long before NOW


@st.composite
def evidences(draw: st.DrawFn, min_size: int = 1, max_size: int = 8) -> list[Evidence]:
    n = draw(st.integers(min_size, max_size))
    return [Evidence(f"e{i}", NOW - draw(offsets), draw(ages), draw(stds)) for i in range(n)]


@st.composite
def beliefs(draw: st.DrawFn) -> Belief:
    return Belief(
        birth_time=NOW - draw(ages) * YEAR_S,
        precision=draw(st.floats(min_value=1e-4, max_value=100.0)),
        updated_at=NOW - draw(offsets),
        observations=draw(st.integers(1, 50)),
        verified=False,
        model_version="m",
        floor=FLOOR,
    )


def close(a: Belief | None, b: Belief | None, *, rel: float = 1e-9, birth_abs_s: float = 1.0) -> bool:
    assert a is not None
    assert b is not None
    return (
        abs(a.birth_time - b.birth_time) <= birth_abs_s
        and math.isclose(a.precision, b.precision, rel_tol=rel)
        and a.updated_at == b.updated_at
        and a.observations == b.observations
        and a.verified == b.verified
    )


@given(beliefs(), st.floats(min_value=-1000 * DAY, max_value=5000 * DAY))
def test_decay_never_raises_confidence(belief: Belief, dt: float) -> None:
    later = decay(belief, belief.updated_at + dt, HALF_LIFE)
    assert later.precision <= belief.precision
    assert later.birth_time == belief.birth_time


@given(beliefs(), offsets, offsets)
def test_decay_composes_without_double_counting(belief: Belief, a: float, b: float) -> None:
    t1 = belief.updated_at + a
    t2 = t1 + b
    once = decay(belief, t2, HALF_LIFE)
    twice = decay(decay(belief, t1, HALF_LIFE), t2, HALF_LIFE)
    assert math.isclose(once.precision, twice.precision, rel_tol=1e-12)


def test_half_life_halves_precision() -> None:
    b = Belief(NOW - 20 * YEAR_S, 4.0, NOW, 3, False, "m")
    assert decay(b, NOW + HALF_LIFE, HALF_LIFE).precision == pytest.approx(2.0)
    assert b.std_at(NOW + 2 * HALF_LIFE, HALF_LIFE) == pytest.approx(1.0)  # 1/sqrt(4/4)


@given(st.one_of(st.none(), beliefs()), evidences())
def test_same_event_twice_equals_once(belief: Belief | None, evs: list[Evidence]) -> None:
    once = fuse(belief, evs, now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR)
    in_one_batch = fuse(belief, evs + evs, now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR)
    assert in_one_batch.belief == once.belief
    assert in_one_batch.duplicates == tuple(e.event_id for e in evs)
    redelivered = fuse(once.belief, evs, now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR, seen=once.seen)
    assert redelivered.belief == once.belief
    assert redelivered.applied == ()


@given(st.one_of(st.none(), beliefs()), evidences(min_size=2), st.randoms(use_true_random=False))
def test_order_does_not_matter_without_decay(belief: Belief | None, evs: list[Evidence], rnd: random.Random) -> None:
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    a = fuse(belief, evs, now=NOW, half_life_s=NO_DECAY, model_version="m", floor=FLOOR).belief
    b = fuse(belief, shuffled, now=NOW, half_life_s=NO_DECAY, model_version="m", floor=FLOOR).belief
    assert close(a, b)
    # ...nor how the evidence is split into batches.
    cut = rnd.randrange(1, len(evs))
    first = fuse(belief, shuffled[:cut], now=NOW, half_life_s=NO_DECAY, model_version="m", floor=FLOOR)
    c = fuse(
        first.belief, shuffled[cut:], now=NOW, half_life_s=NO_DECAY, model_version="m", floor=FLOOR, seen=first.seen
    ).belief
    assert close(a, c)


@given(evidences(min_size=2), st.randoms(use_true_random=False))
def test_order_does_not_matter_with_decay_either(evs: list[Evidence], rnd: random.Random) -> None:
    """Every contribution is decayed to the same reference time, so late events are not favoured."""
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    a = fuse(None, evs, now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR).belief
    cut = rnd.randrange(1, len(evs))
    first = fuse(None, shuffled[:cut], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR)
    b = fuse(
        first.belief, shuffled[cut:], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR, seen=first.seen
    ).belief
    assert close(a, b, rel=1e-9)


@settings(max_examples=50)
@given(
    true_age=st.floats(min_value=8.0, max_value=70.0),
    noise=st.floats(min_value=1.0, max_value=6.0),
    seed=st.integers(0, 2**32 - 1),
    half_life=st.sampled_from([HALF_LIFE, NO_DECAY]),
)
def test_many_noisy_observations_converge(true_age: float, noise: float, seed: int, half_life: float) -> None:
    rnd = random.Random(seed)
    birth = NOW - true_age * YEAR_S
    n = 400
    evs = []
    for i in range(n):
        t = NOW - rnd.uniform(0, 60 * DAY)
        evs.append(Evidence(f"e{i}", t, (t - birth) / YEAR_S + rnd.gauss(0, noise), noise))
    result = fuse(None, evs, now=NOW, half_life_s=half_life, model_version="m", floor=FLOOR)
    b = result.belief
    assert b is not None
    # Draws below age 0 are refused as invalid, so the bound counts what was applied. The standard
    # error shrinks like 1/sqrt(n) (decay over 60 days costs at most ~6%), and the estimate is
    # within 6 standard errors of the truth.
    applied = len(result.applied)
    assert applied > n // 2
    std = b.std_at(NOW, half_life)
    assert std <= 1.07 * noise / math.sqrt(applied)
    assert abs(b.age_at(NOW) - true_age) <= 6 * std


def test_fuse_is_precision_weighted() -> None:
    evs = [Evidence("a", NOW, 10.0, 1.0), Evidence("b", NOW, 20.0, 2.0)]  # precisions 1 and 1/4
    b = fuse(None, evs, now=NOW, half_life_s=HALF_LIFE, model_version="m2", floor=FLOOR).belief
    assert b is not None
    assert b.age_at(NOW) == pytest.approx((10 * 1 + 20 * 0.25) / 1.25)
    assert b.precision == pytest.approx(1.25)
    assert (b.observations, b.model_version, b.verified) == (2, "m2", False)


def test_clock_skew_rule_clamps_small_and_refuses_large() -> None:
    skew = ClockSkewRule(future_tolerance_s=300.0, max_past_s=100 * DAY)
    evs = [
        Evidence("slightly_future", NOW + 200, 20.0, 2.0),
        Evidence("far_future", NOW + 301, 20.0, 2.0),
        Evidence("too_old", NOW - 100 * DAY - 1, 20.0, 2.0),
        Evidence("nan", NOW, math.nan, 2.0),
        Evidence("overconfident", NOW, 20.0, MIN_STD_YEARS / 2),
        Evidence("fine", NOW - DAY, 20.0, 2.0),
    ]
    r = fuse(None, evs, now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR, skew=skew)
    assert r.applied == ("slightly_future", "fine")
    assert {(x.event_id, x.reason) for x in r.refused} == {
        ("far_future", RefusalReason.FUTURE),
        ("too_old", RefusalReason.TOO_OLD),
        ("nan", RefusalReason.INVALID),
        ("overconfident", RefusalReason.INVALID),
    }
    assert r.belief is not None
    assert r.belief.updated_at == NOW  # the future one was clamped to now, not trusted
    assert "far_future" not in r.seen  # a refused event may be retried later


def test_verified_age_replaces_is_authoritative_and_does_not_decay() -> None:
    est = fuse(None, [Evidence("a", NOW, 25.0, 3.0)], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR)
    v = apply_verified(est.belief, verified_age=16.0, verified_at=NOW, now=NOW)
    assert v.verified
    assert v.precision == VERIFIED_PRECISION
    assert v.age_at(NOW) == pytest.approx(16.0)
    assert v.std_at(NOW + 10 * HALF_LIFE, HALF_LIFE) == pytest.approx(0.01)
    later = fuse(
        v, [Evidence("b", NOW + DAY, 30.0, 1.0)], now=NOW + DAY, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR
    )
    assert later.belief == v
    assert later.ignored == ("b",)
    assert verified_refusal("x", 16.0, NOW + 3600, NOW, ClockSkewRule()) is not None
    assert verified_refusal("x", 16.0, NOW - 3 * 365 * DAY, NOW, ClockSkewRule()) is None


@given(beliefs(), st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_probability_is_monotone_in_threshold(belief: Belief, a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    p_lo = belief.p_age_at_least(lo, NOW, HALF_LIFE)
    p_hi = belief.p_age_at_least(hi, NOW, HALF_LIFE)
    assert 0.0 <= p_hi <= p_lo <= 1.0
