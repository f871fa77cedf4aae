"""Step 6, emit: a batch's decisions, dead letters and retained frames go to the sink together and
are awaited once.

The sink resolves each message when Kafka has acknowledged it; the batch is done when all are
(and when its hysteresis state is stored: the pipeline awaits both before answering). Frames of a
consenting user's event that the model scored are retained (stream/core/retention.py) with the
decision, so an event whose offset is committed has its frames kept; without consent nothing is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from model.engine import EncodedFrame, FrameEstimate, FrameResult
from stream.core.lineage import dead_letter_headers, lineage_of_record
from stream.core.retention import retained_records
from stream.core.subjects import RETAINED_FRAME
from stream.errors import InvalidEvent
from stream.pipeline.decode import Event
from stream.pipeline.ports import Codec, SourceRecord


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def dead_letter(topic: str, rec: SourceRecord, exc: InvalidEvent, *, now: float) -> Message:
    """The original bytes, untouched, with why and where from in the headers, and the event's lineage
    (origin, first-seen time, redrive count: stream/core/lineage.py), carried over from a redriven
    copy's marker so that `dead-letters redrive` can tell a re-dead-lettered copy from a new event."""
    lineage = lineage_of_record(rec.headers, rec.topic, rec.partition, rec.offset, int(now * 1000))
    headers = [
        ("error_class", type(exc).__name__.encode()),
        ("reason", exc.reason.encode()),
        ("detail", exc.detail[:500].encode()),
        ("source_topic", rec.topic.encode()),
        ("source_partition", str(rec.partition).encode()),
        ("source_offset", str(rec.offset).encode()),
        *dead_letter_headers(lineage),
    ]
    return Message(topic, rec.key, rec.value, headers)


def retained_frames(
    topic: str, codec: Codec, event: Event, resolved: Sequence[EncodedFrame | object], results: Sequence[FrameResult]
) -> list[Message]:
    """One RetainedFrame message per scored frame of a consenting user's event (none without consent)."""
    if not event.consent:
        return []
    scored = [
        (r.data, r.content_type) if isinstance(r, EncodedFrame) and isinstance(res, FrameEstimate) else None
        for r, res in zip(resolved, results, strict=False)
    ]
    records = retained_records(
        user_id=event.user_id,
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        consent=True,
        frames=event.frames,
        scored=scored,
    )
    return [Message(topic, key, codec.encode(RETAINED_FRAME, record)) for key, record in records]


async def await_all(pending: Sequence[Awaitable[object]]) -> None:
    """Await a batch's sends (and state writes) at once; the first failure is raised after all settle,
    so nothing is left running unobserved."""
    results = await asyncio.gather(*pending, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
