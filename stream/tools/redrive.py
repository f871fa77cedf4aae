"""`agegate dead-letters list|redrive [--reason R] [--since T]`.

After a bug fix, dead letters are put back on their source topic so the worker decides them: the
original key and bytes, the original headers, plus `agegate-redrive` (JSON: where the copy came
from, its reason, when) so a redriven event can be told apart and traced back. At-least-once: every
copy is awaited until Kafka acknowledges it (idempotent producer, acks=all); the command fails
(exit 1) naming what did not go, and running it again is safe: beliefs are idempotent per event id,
so a copy redriven twice only yields a second decision with the same evidence.

Dead letters are read by assignment (no consumer group, nothing committed) up to the topic's end
as of the start, so `list` and `redrive` see the same set for the same filters.

Repeatable (stream/core/lineage.py): a copy that fails again is dead-lettered with its event's
origin, original first-seen time and redrive count, so the dead letters of one event are grouped by
origin and only the latest is selected: each event is redriven once per run, however often it
failed, and the copies a run produces (appended after the end it reads to) are never selected by
that run. Filters (--reason, --since) apply to that latest dead letter and the event's first-seen
time. Grouping holds one dead letter per event in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from stream.adapters.topic_reader import UnknownTopic, read_to_end
from stream.adapters.topics import topic_names
from stream.config import Settings, load_settings
from stream.core.lineage import REDRIVE_HEADER, Lineage, lineage_of_dead_letter, redrive_marker
from stream.errors import AgegateError, DependencyUnavailable

__all__ = [
    "REDRIVE_HEADER",
    "DeadLetter",
    "all_dead_letters",
    "latest_per_event",
    "read_dead_letters",
    "redrive",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    copies: int = 1  # dead letters of the same event read in this run (set by `latest_per_event`)

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return v.decode(errors="replace")
        return ""

    @property
    def reason(self) -> str:
        return self.header("reason") or "unknown"

    @property
    def source_topic(self) -> str:
        return self.header("source_topic")

    @property
    def lineage(self) -> Lineage:
        return lineage_of_dead_letter(self.headers, self.timestamp_ms)

    @property
    def first_seen_ms(self) -> int:
        return self.lineage.first_seen_ms


def parse_since(text: str | None) -> int:
    """ISO-8601 time or @epoch-ms -> epoch ms (0: no bound)."""
    if not text:
        return 0
    if text.startswith("@"):
        return int(text[1:])
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def latest_per_event(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """One dead letter per event (origin): the one with the most redrives, then the latest written,
    with `copies` counting them all; in the order each event was first read."""
    latest: dict[str, DeadLetter] = {}
    for dl in letters:
        origin = dl.lineage.origin
        have = latest.get(origin)
        if have is None:
            latest[origin] = dl
            continue
        newer = (dl.lineage.redrives, dl.timestamp_ms) >= (have.lineage.redrives, have.timestamp_ms)
        latest[origin] = dataclasses.replace(dl if newer else have, copies=have.copies + 1)
    return list(latest.values())


def all_dead_letters(settings: Settings, timeout_s: float = 30.0) -> Iterator[DeadLetter]:
    """Every dead letter on the topic up to its end as of now, copies included (no selection)."""
    topic = topic_names(settings)["dead_letters"]
    try:
        messages = read_to_end(settings, topic, group="agegate-dead-letter-reader", timeout_s=timeout_s)
        for m in messages:
            part, offset, key, value = m.partition(), m.offset(), m.key(), m.value()
            raw_headers: list[tuple[str, str | bytes | None]] = list(m.headers() or [])  # type: ignore[arg-type]
            headers = tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in raw_headers)
            yield DeadLetter(
                part or 0,
                offset or 0,
                m.timestamp()[1],
                key if isinstance(key, bytes) else None,
                value if isinstance(value, bytes) else None,
                headers,
            )
    except UnknownTopic:
        raise AgegateError(f"dead-letter topic {topic} does not exist") from None


def read_dead_letters(
    settings: Settings, *, reason: str | None = None, since_ms: int = 0, timeout_s: float = 30.0
) -> list[DeadLetter]:
    """The latest dead letter of every event (see the module doc) that matches the filters."""
    return [
        dl
        for dl in latest_per_event(all_dead_letters(settings, timeout_s))
        if (reason is None or dl.reason == reason) and dl.first_seen_ms >= since_ms
    ]


@dataclass(frozen=True)
class RedriveResult:
    selected: int
    redriven: int
    failed: tuple[str, ...]  # "partition/offset: error"
    skipped: tuple[str, ...]  # no usable source topic


def redrive(
    settings: Settings, letters: Sequence[DeadLetter] | Iterator[DeadLetter], *, now: float | None = None
) -> RedriveResult:
    """Re-inject dead letters into their source topics; returns once every copy is acknowledged."""
    names = topic_names(settings)
    sources = {names[r] for r in ("signups", "uploads", "feedback")}
    dead_topic = names["dead_letters"]
    producer = Producer(settings.kafka_client_config() | {"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    at_ms = int((time.time() if now is None else now) * 1000)
    failed: list[str] = []
    skipped: list[str] = []
    acked = 0
    selected = 0

    def on_delivery(ref: str) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, _msg: Message) -> None:
            nonlocal acked
            if err is not None:
                failed.append(f"{ref}: {err.str()}")
            else:
                acked += 1

        return cb

    for dl in letters:
        selected += 1
        ref = f"{dead_topic}/{dl.partition}/{dl.offset}"
        if dl.source_topic not in sources:  # never re-inject into a topic the worker does not consume
            skipped.append(f"{dl.partition}/{dl.offset}: source topic {dl.source_topic!r} is not a source topic")
            continue
        marker = redrive_marker(
            dl.lineage,
            from_ref=ref,
            reason=dl.reason,
            at_ms=at_ms,
            source=f"{dl.source_topic}/{dl.header('source_partition')}/{dl.header('source_offset')}",
        )
        headers: list[tuple[str, str | bytes | None]] = [(k, v) for k, v in dl.headers if k != REDRIVE_HEADER]
        headers.append((REDRIVE_HEADER, marker))
        while True:
            try:
                producer.produce(
                    dl.source_topic,
                    key=dl.key,
                    value=dl.value,
                    headers=headers,
                    on_delivery=on_delivery(f"{dl.partition}/{dl.offset}"),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60.0)
    if remaining:
        failed.append(f"{remaining} messages not acknowledged within 60 s")
    return RedriveResult(selected, acked, tuple(failed), tuple(skipped))


def summarize(letters: Iterable[DeadLetter]) -> dict[str, dict[str, object]]:
    """Per reason: events (`count`), their dead letters (`copies`), the most redrives of one event."""
    out: dict[str, dict[str, object]] = {}
    for dl in letters:
        row = out.setdefault(
            dl.reason,
            {
                "count": 0,
                "copies": 0,
                "max_redrives": 0,
                "first_ms": dl.first_seen_ms,
                "last_ms": dl.first_seen_ms,
                "sources": set(),
                "example": f"{dl.partition}/{dl.offset}",
            },
        )
        row["count"] = int(str(row["count"])) + 1
        row["copies"] = int(str(row["copies"])) + dl.copies
        row["max_redrives"] = max(int(str(row["max_redrives"])), dl.lineage.redrives)
        row["first_ms"] = min(int(str(row["first_ms"])), dl.first_seen_ms)
        row["last_ms"] = max(int(str(row["last_ms"])), dl.first_seen_ms)
        sources = row["sources"]
        assert isinstance(sources, set)
        sources.add(dl.source_topic)
    for row in out.values():
        row["sources"] = sorted(row["sources"])  # type: ignore[call-overload]
    return out


def _iso(ms: object) -> str:
    return dt.datetime.fromtimestamp(int(str(ms)) / 1000, tz=dt.UTC).isoformat(timespec="seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("list", "redrive"), help="list: summary by reason; redrive: back to their source topics"
    )
    parser.add_argument("--reason", default=None, help="only dead letters with this reason code")
    parser.add_argument("--since", default=None, help="only those first seen at or after (ISO time or @epoch-ms)")
    parser.add_argument("--json", action="store_true", help="list: print JSON")
    parser.add_argument("--dry-run", action="store_true", help="redrive: show what would be redriven")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    from stream.adapters.kafka_wait import probe

    probe(settings)  # Kafka unreachable: DependencyUnavailable, one line and exit code 3 (stream/cli.py)
    try:
        letters = read_dead_letters(settings, reason=args.reason, since_ms=parse_since(args.since))
        if args.action == "list":
            summary = summarize(letters)
            if args.json:
                print(json.dumps(summary, indent=1, sort_keys=True))
                return 0
            print(
                f"{'reason':28} {'events':>7} {'copies':>7} {'redrives':>8}  {'first seen':25} {'last seen':25} "
                "sources (example)"
            )
            for reason, row in sorted(summary.items()):
                print(
                    f"{reason:28} {row['count']:>7} {row['copies']:>7} {row['max_redrives']:>8}  "
                    f"{_iso(row['first_ms']):25} {_iso(row['last_ms']):25} "
                    f"{','.join(row['sources'])} ({row['example']})"  # type: ignore[arg-type]
                )
            return 0
        if args.dry_run:
            print(f"would redrive {len(letters)} events ({sum(dl.copies for dl in letters)} dead letters)")
            return 0
        result = redrive(settings, letters)
    except DependencyUnavailable:
        raise  # exit code 3 (stream/cli.py), not 2: nothing is wrong with the request
    except AgegateError as exc:
        print(f"dead-letters: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "selected": result.selected,
                "redriven": result.redriven,
                "failed": list(result.failed),
                "skipped": list(result.skipped),
            },
            indent=1,
        )
    )
    return 1 if result.failed else 0
