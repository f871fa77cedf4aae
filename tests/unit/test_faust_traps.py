"""The faust behaviour the worker designs around, pinned so an upgrade that changes it is noticed.

faust computes the offset to commit from the *acked* offsets alone. Its gap check compares the
lowest acked offset with the committed one, but is skipped while the committed offset is None or
0 (`if committed_offset:`). So on a fresh partition, acking offsets 2 and 3 while 0 and 1 are still
in flight commits 4: a crash then loses events 0 and 1. This is why the worker acks in offset
order (stream/runners/offsets.py), never out of order.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from stream.runners.offsets import OffsetTracker

TP0 = TP("signups", 0)


def faust_commit_offset(acked: list[int], committed: int | None) -> int | None:
    state = SimpleNamespace(
        _acked=defaultdict(list, {TP0: list(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked)}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
    )
    return Consumer._new_offset(state, TP0)  # type: ignore[arg-type]


def test_faust_commits_past_in_flight_events_on_a_fresh_partition() -> None:
    # Offsets 0 and 1 are in flight; 2 and 3 are acked out of order. faust would commit 4.
    assert faust_commit_offset([2, 3], committed=None) == 4


def test_faust_gap_check_works_only_once_something_above_zero_was_committed() -> None:
    assert faust_commit_offset([7, 8], committed=5) is None  # 6 in flight: held back, as it should be


def test_acking_in_offset_order_gives_faust_only_safe_prefixes() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    for offset in range(4):
        tracker.start("signups", 0, offset, offset)
    acked: list[int] = []
    for finished in (2, 3, 1):
        acked += tracker.finish("signups", 0, finished)
        assert acked == []  # 0 still in flight: nothing reaches faust
        assert faust_commit_offset(acked, committed=None) is None
    acked += tracker.finish("signups", 0, 0)
    assert faust_commit_offset(acked, committed=None) == 4


def test_take_events_acks_its_batch_when_the_body_returns_and_noack_take_does_not() -> None:
    """The worker takes batches with `noack_take` and acks through the driver once decisions are
    stored. `take_events` (like `take`) acks every event of a batch in a `finally` after the batch
    body, raised or not, i.e. before the decisions exist when the body only hands the batch over.
    Pinned at the source level (a faust upgrade that changes either must be looked at)."""
    import inspect

    from faust.streams import Stream

    take_events = inspect.getsource(Stream.take_events)
    noack_take = inspect.getsource(Stream.noack_take)
    assert "await self.ack(event)" in take_events.split("finally:", 1)[1]
    acks = [line for line in noack_take.splitlines() if "self.ack(" in line]
    assert all(line.strip().startswith("#") for line in acks)  # commented out: it never acks
    assert "yield list(buffer)" in noack_take  # and the buffer holds the events themselves
    assert "buffer_add(cast(T_co, event))" in noack_take
