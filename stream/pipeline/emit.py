"""Step 6, emit: a batch's decisions and dead letters go to the sink together and are awaited once.

The sink resolves each message when Kafka has acknowledged it; the batch is done when all are
(and when its hysteresis state is stored: the pipeline awaits both before answering).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from stream.errors import InvalidEvent
from stream.pipeline.ports import SourceRecord


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def dead_letter(topic: str, rec: SourceRecord, exc: InvalidEvent, *, now: float) -> Message:
    """The original bytes, untouched, with why and where from in the headers."""
    headers = [
        ("error_class", type(exc).__name__.encode()),
        ("reason", exc.reason.encode()),
        ("detail", exc.detail[:500].encode()),
        ("source_topic", rec.topic.encode()),
        ("source_partition", str(rec.partition).encode()),
        ("source_offset", str(rec.offset).encode()),
        ("first_seen_ms", str(int(now * 1000)).encode()),
    ]
    return Message(topic, rec.key, rec.value, headers)


async def await_all(pending: Sequence[Awaitable[object]]) -> None:
    """Await a batch's sends (and state writes) at once; the first failure is raised after all settle,
    so nothing is left running unobserved."""
    results = await asyncio.gather(*pending, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
