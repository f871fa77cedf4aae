"""A dead letter's lineage: which event it is, when it first failed, how often it was redriven.

Why: a redrive puts a dead letter's bytes back on its source topic. If the cause is not fixed, the
copy fails again and becomes a second dead letter. Unless that second dead letter says it is the same
event, the next redrive selects both, and every repeated redrive doubles the dead letters
(72 -> 144 -> 288). So the lineage travels with the event:

- the redrive marker header on a copy carries the event's origin (the source topic/partition/offset
  where it first arrived), its first-seen time and the number of times it has been redriven;
- the pipeline's dead-letter step copies them from a failing record's marker into the new dead
  letter's headers (a record without a marker starts a lineage: origin = its own position);
- `agegate dead-letters redrive` keeps one dead letter per origin, the latest, so each event is
  redriven once per run however many times it failed before.

Pure functions over header lists, shared by the pipeline (base + core only) and the tools.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

REDRIVE_HEADER = "agegate-redrive"  # on a redriven copy: JSON, see `redrive_marker`
ORIGIN_HEADER = "origin"  # on a dead letter: "topic/partition/offset" where the event first arrived
FIRST_SEEN_HEADER = "first_seen_ms"  # on a dead letter: when the event first failed (epoch ms)
REDRIVES_HEADER = "redrive_count"  # on a dead letter: how many redrives the event had before this failure

Headers = Sequence[tuple[str, bytes | str | None]]


@dataclass(frozen=True, slots=True)
class Lineage:
    origin: str  # "topic/partition/offset" of the event's first arrival
    first_seen_ms: int
    redrives: int  # redrives before the failure this lineage describes


def position(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def header(headers: Headers, name: str) -> str:
    """The last value of header `name` ("" when absent): a re-sent record may carry an old one too."""
    found = ""
    for key, value in headers:
        if key == name:
            found = _text(value)
    return found


def _int(text: str, default: int) -> int:
    return int(text) if text.isdigit() else default


def lineage_of_record(headers: Headers, topic: str, partition: int, offset: int, now_ms: int) -> Lineage:
    """The lineage of a source record that fails now (for the dead letter the pipeline writes).

    A redriven copy carries its event's lineage in the redrive marker; anything else starts one.
    A marker that does not parse (not ours, or damaged) is treated as absent: the copy then counts
    as a new event, which at worst redrives it once more, never loses it.
    """
    raw = header(headers, REDRIVE_HEADER)
    if raw:
        try:
            marker = json.loads(raw)
            return Lineage(str(marker["origin"]), int(marker["first_seen_ms"]), int(marker["count"]))
        except (ValueError, KeyError, TypeError):
            pass
    return Lineage(position(topic, partition, offset), now_ms, 0)


def dead_letter_headers(lineage: Lineage) -> list[tuple[str, bytes]]:
    return [
        (ORIGIN_HEADER, lineage.origin.encode()),
        (FIRST_SEEN_HEADER, str(lineage.first_seen_ms).encode()),
        (REDRIVES_HEADER, str(lineage.redrives).encode()),
    ]


def lineage_of_dead_letter(headers: Headers, timestamp_ms: int) -> Lineage:
    """A dead letter's lineage from its headers. Dead letters written before lineage headers existed
    name only the failing record's position: that is their origin, and they count 0 redrives."""
    origin = header(headers, ORIGIN_HEADER) or position(
        header(headers, "source_topic"),
        _int(header(headers, "source_partition"), -1),
        _int(header(headers, "source_offset"), -1),
    )
    return Lineage(
        origin, _int(header(headers, FIRST_SEEN_HEADER), timestamp_ms), _int(header(headers, REDRIVES_HEADER), 0)
    )


def redrive_marker(lineage: Lineage, *, from_ref: str, reason: str, source: str, at_ms: int) -> bytes:
    """The marker a redriven copy carries: its lineage one redrive further, and where it came from."""
    return json.dumps(
        {
            "origin": lineage.origin,
            "first_seen_ms": lineage.first_seen_ms,
            "count": lineage.redrives + 1,
            "from": from_ref,
            "reason": reason,
            "source": source,
            "at_ms": at_ms,
        },
        sort_keys=True,
    ).encode()
