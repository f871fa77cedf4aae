from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from model.engine import FrameError, FrameEstimate
from stream.core.belief import Belief, ErrorFloor, event_evidence, fuse
from stream.pipeline.shadow import swap_evidence

HL = 365 * 86400.0
ests = st.lists(st.tuples(st.floats(5, 80), st.floats(0.5, 10)), min_size=1, max_size=4)


LIVE_FLOOR, SHADOW_FLOOR = 2.0, 1.5


@given(
    prior=st.one_of(st.none(), st.tuples(st.floats(5, 80), st.floats(0.5, 10), st.floats(0, 3e7))),
    live=ests,
    shadow=ests,
)
def test_swapping_live_for_shadow_evidence_equals_fusing_the_shadow(prior, live, shadow) -> None:
    """The pipeline fuses an event's frames as one observation; the shadow swaps that observation."""
    t = 1.7e9
    before = None
    if prior is not None:
        prior_ev = event_evidence("p", t - prior[2], [(prior[0], prior[1])], LIVE_FLOOR)
        assert prior_ev is not None
        before = fuse(None, [prior_ev], now=t, half_life_s=HL, model_version="m", floor=LIVE_FLOOR).belief
    live_ev = event_evidence("l", t, live, LIVE_FLOOR)
    shadow_ev = event_evidence("s", t, shadow, SHADOW_FLOOR)
    assert live_ev is not None
    assert shadow_ev is not None
    after = fuse(before, [live_ev], now=t, half_life_s=HL, model_version="m", floor=LIVE_FLOOR).belief
    want = fuse(before, [shadow_ev], now=t, half_life_s=HL, model_version="m", floor=SHADOW_FLOOR).belief
    got = swap_evidence(
        after,
        t,
        [FrameEstimate(m, s) for m, s in live],
        [FrameEstimate(m, s) for m, s in shadow],
        half_life_s=HL,
        model_version="m",
        live_floor=ErrorFloor(LIVE_FLOOR),
        shadow_floor=ErrorFloor(SHADOW_FLOOR),
    )
    assert got is not None
    assert want is not None
    assert abs(got.age_at(t) - want.age_at(t)) < 1e-6
    assert abs(got.precision - want.precision) <= 1e-9 * want.precision
    assert got.observations == want.observations
    # The live floor stays in the swapped belief (it is the larger): a mixed belief keeps the larger floor.
    assert abs(got.floor - max(want.floor, LIVE_FLOOR)) <= 1e-12


def test_a_verified_belief_is_left_alone_and_failed_shadow_frames_add_nothing() -> None:
    verified = Belief(0.0, 1e4, 1.0, 1, True, "")
    assert (
        swap_evidence(
            verified,
            1.0,
            [FrameEstimate(30, 2)],
            [FrameEstimate(9, 2)],
            half_life_s=HL,
            model_version="x",
            live_floor=ErrorFloor(LIVE_FLOOR),
            shadow_floor=ErrorFloor(SHADOW_FLOOR),
        )
        is verified
    )
    only_live = Belief(1.7e9 - 30 * 365.25 * 86400, 0.25, 1.7e9, 1, False, "m")
    assert (
        swap_evidence(
            only_live,
            1.7e9,
            [FrameEstimate(30, 2)],
            [FrameError("corrupt", "")],
            half_life_s=HL,
            model_version="x",
            live_floor=ErrorFloor(LIVE_FLOOR),
            shadow_floor=ErrorFloor(SHADOW_FLOOR),
        )
        is None
    )
