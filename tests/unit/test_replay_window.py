from __future__ import annotations

import datetime as dt

import pytest

from stream.pipeline.ports import Outcome, SourceRecord
from stream.runners.replay import (
    Bound,
    PartitionWindow,
    RateLimiter,
    ReplayError,
    ReplayState,
    order_key,
    outcome_line,
    parse_bound,
    parse_shard,
)


def test_bounds_parse_times_offsets_and_keywords() -> None:
    assert parse_bound("earliest") == Bound("earliest")
    assert parse_bound("@1700000000000") == Bound("time", time_ms=1_700_000_000_000)
    assert parse_bound("2023-11-14T22:13:20Z").time_ms == 1_700_000_000_000
    b = parse_bound("0=5,uploads/1=7")
    assert b.offset_for("x.signups", "signups", 0) == 5
    assert b.offset_for("x.uploads", "uploads", 1) == 7
    assert b.offset_for("x.signups", "signups", 1) is None
    with pytest.raises(ReplayError):
        parse_bound("yesterday")
    with pytest.raises(ReplayError):
        parse_bound("a=b")


def test_shard_spec() -> None:
    assert parse_shard(None) == (0, 1)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x/2", "-1/2"):
        with pytest.raises(ReplayError):
            parse_shard(bad)


def test_merge_order_is_time_then_position() -> None:
    recs = [
        SourceRecord("b", 0, 5, None, None, 10),
        SourceRecord("a", 1, 2, None, None, 10),
        SourceRecord("a", 0, 9, None, None, 9),
    ]
    assert [(r.topic, r.partition) for r in sorted(recs, key=order_key)] == [("a", 0), ("a", 1), ("b", 0)]


def test_output_lines_are_canonical_bytes() -> None:
    rec = SourceRecord("t", 0, 3, b"u1", b"", 0)
    decision = {"b": 1, "a": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "c": 0.1}
    line = outcome_line(rec, Outcome("decision", action="ALLOW", decision=decision))
    assert line == (
        b'{"decision":{"a":"2024-01-01T00:00:00.000Z","b":1,"c":0.1},"idempotency_key":"t/0/3","kind":"decision"}\n'
    )
    assert outcome_line(rec, Outcome("dead_letter", reason="corrupt")).endswith(b'"reason":"corrupt"}\n')


def test_rate_limiter_spaces_events_without_waiting_itself() -> None:
    now = [100.0]
    limiter = RateLimiter(4.0, clock=lambda: now[0])
    assert [limiter.delay() for _ in range(3)] == [0.0, 0.25, 0.5]
    now[0] = 101.0  # caught up: no debt carried as a burst allowance beyond the schedule
    assert limiter.delay() == 0.0
    assert RateLimiter(0).delay() == 0.0


def test_state_round_trips_and_counts_what_is_left() -> None:
    st = ReplayState("r", [PartitionWindow("t", 0, 10, 20), PartitionWindow("t", 1, 0, 5)], 1.0, "m", "p", "file:x")
    st.positions = {"t/0": 15}
    again = ReplayState.from_json(st.to_json())
    assert again == st
    assert again.remaining() == 10
