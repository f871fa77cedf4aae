"""The error floor and one-event-one-observation (stream/core/belief.py): what keeps P(age >= T) honest."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from stream.core.belief import (
    FRAME_CORRELATION_IN_EVENT,
    apply_verified,
    belief_std,
    event_evidence,
    fuse,
    independent_variance,
)

NOW = 1_750_000_000.0
DAY = 86400.0
HALF_LIFE = 365 * DAY

frame = st.tuples(st.floats(5.0, 80.0), st.floats(0.3, 8.0))
floors = st.floats(0.0, 5.0)


@given(st.lists(st.lists(frame, min_size=1, max_size=6), min_size=1, max_size=60), floors)
def test_fused_std_never_falls_below_the_floor(events: list[list[tuple[float, float]]], floor: float) -> None:
    """However many events (and frames) are fused, the belief is never surer than the floor."""
    evs = [event_evidence(f"e{i}", NOW - i * DAY, frames, floor) for i, frames in enumerate(events)]
    belief = fuse(
        None, [e for e in evs if e is not None], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=floor
    ).belief
    assert belief is not None
    assert belief.std_at(NOW, HALF_LIFE) >= floor
    assert belief.observations == len(events)  # an event's frames are one observation


def test_a_thousand_identical_events_approach_the_floor_not_zero() -> None:
    floor, s = 2.0, 2.5
    evs = [event_evidence(f"e{i}", NOW, [(20.0, s)], floor) for i in range(1000)]
    belief = fuse(
        None, [e for e in evs if e is not None], now=NOW, half_life_s=math.inf, model_version="m", floor=floor
    ).belief
    assert belief is not None
    std = belief.std_at(NOW, math.inf)
    assert floor < std < floor * 1.001


@given(st.floats(0.5, 8.0), floors)
def test_one_frame_keeps_its_calibrated_std_when_it_exceeds_the_floor(s: float, floor: float) -> None:
    """sqrt(1/P + floor^2) at one observation is the frame's own std: the floor is not counted twice."""
    ev = event_evidence("e", NOW, [(20.0, s)], floor)
    assert ev is not None
    std = belief_std(1.0 / ev.std_age**2, floor)
    if s * s * 0.75 >= floor * floor:
        assert math.isclose(std, s, rel_tol=1e-9)
    else:  # a frame claiming less error than the floor allows is widened, never trusted more
        assert std >= s


@given(st.lists(frame, min_size=1, max_size=200), floors)
def test_one_event_adds_at_most_twice_its_best_frames_precision(
    frames: list[tuple[float, float]], floor: float
) -> None:
    ev = event_evidence("e", NOW, frames, floor)
    assert ev is not None
    best = max(1.0 / independent_variance(s, floor) for _, s in frames)
    assert 1.0 / ev.std_age**2 <= best / FRAME_CORRELATION_IN_EVENT * (1 + 1e-9)
    assert min(m for m, _ in frames) - 1e-9 <= ev.mean_age <= max(m for m, _ in frames) + 1e-9


def test_many_frames_in_one_event_weigh_less_than_as_many_events() -> None:
    floor = 2.0
    frames = [(20.0, 3.0)] * 20
    one_event = event_evidence("e", NOW, frames, floor)
    assert one_event is not None
    many_events = [event_evidence(f"e{i}", NOW, [f], floor) for i, f in enumerate(frames)]
    b1 = fuse(None, [one_event], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=floor).belief
    b20 = fuse(
        None, [e for e in many_events if e is not None], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=floor
    ).belief
    assert b1 is not None
    assert b20 is not None
    assert b1.std_at(NOW, HALF_LIFE) > b20.std_at(NOW, HALF_LIFE)
    assert b1.observations == 1
    assert b20.observations == 20


def test_no_frames_no_evidence() -> None:
    assert event_evidence("e", NOW, [], 2.0) is None


def test_a_mixed_belief_keeps_the_larger_floor_and_a_verified_age_has_none() -> None:
    ev = event_evidence("a", NOW, [(20.0, 3.0)], 2.5)
    ev2 = event_evidence("b", NOW, [(20.0, 3.0)], 1.0)
    assert ev is not None
    assert ev2 is not None
    first = fuse(None, [ev], now=NOW, half_life_s=HALF_LIFE, model_version="old", floor=2.5).belief
    mixed = fuse(first, [ev2], now=NOW, half_life_s=HALF_LIFE, model_version="new", floor=1.0).belief
    assert mixed is not None
    assert mixed.floor == 2.5
    verified = apply_verified(mixed, verified_age=17.0, verified_at=NOW, now=NOW)
    assert verified.floor == 0.0
    assert verified.std_at(NOW, HALF_LIFE) < 0.02
