"""Offsets are committed only past events that are done, and every event before them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.runners.offsets import OffsetTracker


@given(st.permutations(list(range(30))))
def test_release_is_in_offset_order_and_never_passes_an_in_flight_event(order: list[int]) -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    base = 100
    for i in range(30):
        tracker.start("t", 0, base + i, base + i)
    released: list[int] = []
    done: set[int] = set()
    for i in order:
        done.add(base + i)
        released += tracker.finish("t", 0, base + i)
        committable = tracker.committable("t", 0)
        # Everything below the committable offset is done; the committable offset itself is not in flight
        # or is the first unfinished one.
        if committable is not None:
            assert all(o in done for o in range(base, committable))
            assert committable == base + 30 or committable not in done
        assert released == sorted(released)
        assert released == list(range(base, base + len(released)))
    assert released == list(range(base, base + 30))
    assert tracker.in_flight() == 0


def test_a_first_event_still_in_flight_holds_everything_back() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in (0, 1, 2):
        tracker.start("t", 3, offset, f"e{offset}")
    assert tracker.finish("t", 3, 2) == []
    assert tracker.finish("t", 3, 1) == []
    assert tracker.committable("t", 3) is None
    assert tracker.finish("t", 3, 0) == ["e0", "e1", "e2"]
    assert tracker.committable("t", 3) == 3


def test_partitions_are_independent() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start("t", 0, 5, "a")
    tracker.start("t", 1, 9, "b")
    assert tracker.finish("t", 1, 9) == ["b"]
    assert tracker.committable("t", 0) is None
    assert tracker.committable("t", 1) == 10


def test_revoked_partition_releases_nothing() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start("t", 0, 1, "a")
    tracker.forget("t", 0)
    assert tracker.finish("t", 0, 1) == []


def test_double_start_and_unknown_finish_are_bugs() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start("t", 0, 1, "a")
    with pytest.raises(ValueError, match="already in flight"):
        tracker.start("t", 0, 1, "a")
    with pytest.raises(ValueError, match="not in flight"):
        tracker.finish("t", 0, 2)


def test_an_offset_finished_twice_is_a_bug_and_held_offsets_count_as_in_flight() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start("t", 0, 1, "a")
    tracker.start("t", 0, 2, "b")
    assert tracker.finish("t", 0, 2) == []  # held back behind 1
    assert tracker.in_flight() == 2
    with pytest.raises(ValueError, match="not in flight"):
        tracker.finish("t", 0, 2)
    assert tracker.finish("t", 0, 1) == ["a", "b"]
    assert tracker.in_flight() == 0
    tracker.start("t", 0, 3, "c")  # the partition goes on after a release
    assert tracker.finish("t", 0, 3) == ["c"]
    assert tracker.committable("t", 0) == 4
