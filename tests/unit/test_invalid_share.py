"""Most input being invalid stops the worker loudly: a deployment mistake, not bad users."""

from __future__ import annotations

import pytest

from stream.pipeline import InvalidInputShareExceeded, InvalidShareGuard


def test_guard_trips_only_on_a_full_window_above_the_limit() -> None:
    guard = InvalidShareGuard(limit=0.5, window=10)
    for _ in range(9):
        guard.record(True)  # window not full yet: a burst at start-up does not decide alone
    guard2 = InvalidShareGuard(limit=0.5, window=10)
    for invalid in [False] * 5 + [True] * 5:
        guard2.record(invalid)  # exactly 50%: tolerated
    with pytest.raises(InvalidInputShareExceeded, match="60% of the last 10 events"):
        guard2.record(True)


def test_guard_tolerates_a_share_at_the_limit() -> None:
    guard = InvalidShareGuard(limit=0.5, window=10)
    for i in range(100):
        guard.record(i % 2 == 0)  # exactly half invalid
