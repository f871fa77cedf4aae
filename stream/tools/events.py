"""Builders of well-formed event records, shared by the demo, the load generator and the tests."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any


def utc_ms(ts: float) -> dt.datetime:
    """A unix time as the timezone-aware datetime fastavro writes as timestamp-millis."""
    return dt.datetime.fromtimestamp(round(ts, 3), tz=dt.UTC)


def inline_frame(frame_id: str, data: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
    return {"frame_id": frame_id, "source": {"content_type": content_type, "data": data}}


def uri_frame(frame_id: str, uri: str, content_type: str | None = None) -> dict[str, Any]:
    return {"frame_id": frame_id, "source": {"uri": uri, "content_type": content_type}}


def signup(
    user_id: str,
    *,
    at: float,
    jurisdiction: str = "US",
    declared_age: int | None = None,
    frames: Sequence[dict[str, Any]] = (),
    event_id: str | None = None,
    signup_method: str = "email",
    consent: bool = False,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "user_id": user_id,
        "occurred_at": utc_ms(at),
        "jurisdiction": jurisdiction,
        "declared_birth_date": None,
        "declared_age": declared_age,
        "signup_method": signup_method,
        "consent_model_improvement": consent,
        "frames": list(frames),
    }


def upload(
    user_id: str,
    *,
    at: float,
    surface: str,
    jurisdiction: str = "US",
    frames: Sequence[dict[str, Any]] = (),
    content_id: str | None = None,
    event_id: str | None = None,
    consent: bool = False,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "user_id": user_id,
        "occurred_at": utc_ms(at),
        "jurisdiction": jurisdiction,
        "content_id": content_id or f"c-{uuid.uuid4().hex[:12]}",
        "surface": surface,
        "consent_model_improvement": consent,
        "frames": list(frames),
    }


def feedback(
    user_id: str,
    *,
    at: float,
    verified_age: float,
    method: str = "ID_CHECK",
    jurisdiction: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "user_id": user_id,
        "occurred_at": utc_ms(at),
        "verified_age": float(verified_age),
        "method": method,
        "jurisdiction": jurisdiction,
    }
