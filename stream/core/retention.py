"""Consented retention: which frames may be kept, and how a retained frame is keyed (pure logic).

A frame is kept only when its event says the user consented to model improvement. Each retained
frame is its own record keyed by the JSON array [user_id, event_id, frame_id]: compaction then
keeps every frame (one key each), a redelivered event overwrites its own frames instead of adding
copies, and erasure writes one tombstone (null value) per key of the user.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def frame_key(user_id: str, event_id: str, frame_id: str) -> bytes:
    return json.dumps([user_id, event_id, frame_id], separators=(",", ":")).encode()


def key_user(key: bytes | None) -> str | None:
    """The user of a retained-frame key; None for a key that is not one (never raises)."""
    if not key:
        return None
    try:
        parts = json.loads(key)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(parts, list) and len(parts) == 3 and all(isinstance(p, str) for p in parts):
        return parts[0]
    return None


def consented(record: Mapping[str, Any]) -> bool:
    """True only for an explicit consent flag: absent (older producers) or null means no consent."""
    return record.get("consent_model_improvement") is True


def retained_records(
    *,
    user_id: str,
    event_id: str,
    occurred_at: Any,
    consent: bool,
    frames: Sequence[Mapping[str, Any]],
    scored: Sequence[tuple[bytes, str] | None],
) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, RetainedFrame record) for each scored frame of a consenting user's event.

    `scored` is aligned with the event's `frames`: (bytes, content type) for a frame the model
    scored, None for one it did not (undecodable, over the limit, not fetched): only what the model
    could use is worth keeping. Without consent: nothing.
    """
    if not consent:
        return []
    out = []
    for declared, got in zip(frames, scored, strict=False):
        if got is None:
            continue
        frame_id = str(declared.get("frame_id", ""))
        data, content_type = got
        out.append(
            (
                frame_key(user_id, event_id, frame_id),
                {
                    "user_id": user_id,
                    "event_id": event_id,
                    "frame_id": frame_id,
                    "occurred_at": occurred_at,
                    "content_type": content_type,
                    "data": data,
                },
            )
        )
    return out
