"""Repeated redrives over an unfixed cause select each event once (pure logic of stream/core/lineage.py and
the redrive tool's selection; the same loop against Kafka and a real pipeline is tests/integration/test_redrive.py)."""

from __future__ import annotations

from stream.core.lineage import (
    REDRIVE_HEADER,
    Lineage,
    dead_letter_headers,
    lineage_of_dead_letter,
    lineage_of_record,
    redrive_marker,
)
from stream.tools.redrive import DeadLetter, latest_per_event, summarize

SOURCE = "agegate.signups"


def fail(headers: list[tuple[str, bytes]], partition: int, offset: int, now_ms: int) -> list[tuple[str, bytes]]:
    """The dead-letter headers the pipeline writes for a record at SOURCE/partition/offset failing now."""
    lineage = lineage_of_record(headers, SOURCE, partition, offset, now_ms)
    return [
        ("reason", b"unknown_schema_id"),
        ("source_topic", SOURCE.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
        *dead_letter_headers(lineage),
    ]


def test_three_redrives_of_an_unfixed_cause_select_each_event_once() -> None:
    events = 7
    dead: list[DeadLetter] = [
        DeadLetter(0, i, 1_000 + i, b"k", b"v", tuple(fail([], 0, i, 1_000 + i))) for i in range(events)
    ]
    next_source_offset = events
    for run in range(1, 4):
        selected = latest_per_event(dead)
        assert len(selected) == events, f"run {run} selects each event once, not every copy"
        assert {dl.copies for dl in selected} == {run}
        for dl in selected:  # redrive: the copy carries the marker; it fails again (cause not fixed)
            marker = redrive_marker(dl.lineage, from_ref=f"dl/0/{dl.offset}", reason=dl.reason, source="", at_ms=0)
            copy_headers = [*[(k, v) for k, v in dl.headers if k != REDRIVE_HEADER], (REDRIVE_HEADER, marker)]
            headers = fail(copy_headers, 0, next_source_offset, 10_000 * run)
            dead.append(DeadLetter(0, len(dead), 10_000 * run, b"k", b"v", tuple(headers)))
            next_source_offset += 1
        assert len(dead) == events * (run + 1), "one new dead letter per event per run: linear, not doubling"
    final = latest_per_event(dead)
    assert len(final) == events
    lineages = sorted((dl.lineage for dl in final), key=lambda x: x.origin)
    assert lineages == [Lineage(f"{SOURCE}/0/{i}", 1_000 + i, 3) for i in range(events)], "first-seen kept, 3 redrives"
    row = summarize(final)["unknown_schema_id"]
    assert (row["count"], row["copies"], row["max_redrives"]) == (events, events * 4, 3)


def test_dead_letters_without_lineage_headers_are_their_own_origin() -> None:
    old = [("source_topic", b"t"), ("source_partition", b"2"), ("source_offset", b"40"), ("first_seen_ms", b"77")]
    assert lineage_of_dead_letter(old, 99) == Lineage("t/2/40", 77, 0)
    assert lineage_of_dead_letter([("source_topic", b"t")], 99) == Lineage("t/-1/-1", 99, 0)


def test_a_damaged_marker_starts_a_new_lineage() -> None:
    assert lineage_of_record([(REDRIVE_HEADER, b"{not json")], "t", 1, 5, 123) == Lineage("t/1/5", 123, 0)
    assert lineage_of_record([(REDRIVE_HEADER, b'{"from": "x"}')], "t", 1, 5, 123) == Lineage("t/1/5", 123, 0)


def test_the_latest_dead_letter_of_an_event_carries_its_current_reason() -> None:
    first = DeadLetter(0, 0, 1, None, b"v", (("reason", b"a"), *dead_letter_headers(Lineage("t/0/0", 1, 0))))
    again = DeadLetter(1, 0, 2, None, b"v", (("reason", b"b"), *dead_letter_headers(Lineage("t/0/0", 1, 1))))
    (latest,) = latest_per_event([again, first])
    assert (latest.reason, latest.copies) == ("b", 2)


def test_the_pipelines_dead_letter_carries_a_redriven_copys_lineage() -> None:
    """stream/pipeline/emit.py writes the lineage from the copy's marker, not the copy's own position."""
    from stream.errors import InvalidEvent
    from stream.pipeline.emit import dead_letter
    from stream.pipeline.ports import SourceRecord, record_headers

    marker = redrive_marker(Lineage("t/3/7", 1_000, 1), from_ref="dl/0/5", reason="corrupt", source="t/3/7", at_ms=0)
    copy = SourceRecord("t", 9, 42, b"k", b"v", 5, record_headers([(REDRIVE_HEADER, marker.decode())]))
    message = dead_letter("dl", copy, InvalidEvent("bad", reason="corrupt"), now=50.0)
    headers = dict(message.headers)
    assert (headers["origin"], headers["first_seen_ms"], headers["redrive_count"]) == (b"t/3/7", b"1000", b"2")
    assert (headers["source_partition"], headers["source_offset"]) == (b"9", b"42"), "where this copy failed"
    fresh = dead_letter("dl", SourceRecord("t", 1, 2, None, b"v", 5), InvalidEvent("bad", reason="corrupt"), now=50.0)
    assert lineage_of_dead_letter(fresh.headers, 0) == Lineage("t/1/2", 50_000, 0)


def test_record_headers_accepts_what_kafka_clients_return() -> None:
    from stream.pipeline.ports import record_headers

    assert record_headers(None) == ()
    assert record_headers([("a", b"1"), ("b", "2"), ("c", None)]) == (("a", b"1"), ("b", b"2"), ("c", b""))
    assert record_headers({"a": b"1"}) == (("a", b"1"),)
