"""Step 1, decode: a batch of source records becomes typed events, or the reason each one is invalid.

Past this step nothing reads the Avro record: the pipeline works on `Event`, so a field's meaning
(what jurisdiction, which surface, which age claim) is decided once, here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream.core.retention import consented
from stream.core.subjects import FEEDBACK, SIGNUP, UPLOAD
from stream.errors import DecodeError, InvalidEvent
from stream.pipeline.ports import Codec, SourceRecord

SURFACE_FOR_ACCOUNT = "account_creation"


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded source event; `source` is where it came from (its offset travels with it)."""

    source: SourceRecord
    subject: str
    user_id: str
    event_id: str
    occurred_at: dt.datetime
    jurisdiction: str  # as sent ("" when absent); feedback falls back to the policy's default later
    surface: str  # signups and feedback decide account creation
    frames: tuple[Mapping[str, Any], ...]
    verified_age: float | None = None  # feedback only
    declared_age: float | None = None  # signups only: as stated
    declared_birth_date: dt.date | None = None  # signups only
    consent: bool = False  # consented to model improvement: scored frames go to the retained-frames topic

    @property
    def event_type(self) -> str:
        return self.subject.rsplit(".", 1)[-1]


def subjects_by_topic(topics: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Which subject each source topic may carry (anything else is dead-lettered as misrouted)."""
    return {topics["signups"]: (SIGNUP,), topics["uploads"]: (UPLOAD,), topics["feedback"]: (FEEDBACK,)}


def decode_batch(
    codec: Codec, expected: Mapping[str, tuple[str, ...]], records: Sequence[SourceRecord]
) -> list[Event | InvalidEvent]:
    """One event or one typed error per record, in order."""
    out: list[Event | InvalidEvent] = []
    for rec in records:
        try:
            decoded = codec.decode(rec.value, expected.get(rec.topic))
        except DecodeError as exc:
            out.append(exc)
            continue
        out.append(_event(rec, decoded.subject, decoded.record))
    return out


def _event(rec: SourceRecord, subject: str, record: Mapping[str, Any]) -> Event:
    verified = declared = None
    birth = None
    if subject == FEEDBACK:
        surface = SURFACE_FOR_ACCOUNT
        verified = float(record["verified_age"])
    elif subject == SIGNUP:
        surface = SURFACE_FOR_ACCOUNT
        declared = float(record["declared_age"]) if record.get("declared_age") is not None else None
        birth = record.get("declared_birth_date")
    else:
        surface = str(record["surface"])
    return Event(
        source=rec,
        subject=subject,
        user_id=str(record["user_id"]),
        event_id=str(record["event_id"]),
        occurred_at=record["occurred_at"],
        jurisdiction=str(record.get("jurisdiction") or ""),
        surface=surface,
        frames=tuple(record.get("frames") or ()),
        verified_age=verified,
        declared_age=declared,
        declared_birth_date=birth,
        consent=consented(record),
    )
