"""Most input being invalid trips the guard (a deployment mistake, not bad users); the worker pauses on it."""

from __future__ import annotations

from stream.pipeline.pipeline import InvalidShareGuard


def test_guard_trips_only_on_a_full_window_above_the_limit() -> None:
    guard = InvalidShareGuard(limit=0.5, window=10)
    for _ in range(9):
        guard.record(True)  # window not full yet: a burst at start-up does not decide alone
    assert guard.tripped is None
    guard2 = InvalidShareGuard(limit=0.5, window=10)
    for invalid in [False] * 5 + [True] * 5:
        guard2.record(invalid)  # exactly 50%: tolerated
    assert guard2.tripped is None
    guard2.record(True)
    assert guard2.tripped is not None
    assert "60% of the last 10 events" in guard2.tripped


def test_guard_tolerates_a_share_at_the_limit() -> None:
    guard = InvalidShareGuard(limit=0.5, window=10)
    for i in range(100):
        guard.record(i % 2 == 0)  # exactly half invalid
    assert guard.tripped is None


def test_tripped_stays_until_reset_then_needs_a_full_window_again() -> None:
    guard = InvalidShareGuard(limit=0.5, window=4)
    for _ in range(4):
        guard.record(True)
    reason = guard.tripped
    assert reason is not None
    guard.record(False)  # later valid events do not clear it: only an operator does
    assert guard.tripped == reason
    guard.reset()
    assert guard.tripped is None
    for _ in range(3):
        guard.record(True)  # a fresh window: three of four is not yet a decision
    assert guard.tripped is None
    guard.record(True)
    assert guard.tripped is not None
