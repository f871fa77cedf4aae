"""Synthetic event streams with known true ages, for the demo, the tests and the benchmarks.

Deterministic from a seed. Frames come from the model's synthetic face generator, so a model
trained on synthetic data sees the same kind of faces. The stream holds the hard cases, not only
easy ones: most users are aged near the 13/16/18 thresholds and their buffers, every user has a
persistent look-older/younger offset of the generator's spread (someone who looks 21 at 16 looks 21
in every photo) plus per-photo noise, and a share of users upload tens of times, which is where
fusion that believed one person's photos to be independent would grow overconfident. Bad events
(a chosen share) cover what producers get wrong: random bytes, truncated Avro, an unknown schema id, frames that are all
corrupt or empty.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.data.synthetic import IMAGE_NOISE_SD, SUBJECT_OFFSET_SD, encode_jpeg, render_face, sample_attributes
from stream.adapters.codec import AvroCodec
from stream.core.subjects import FEEDBACK, SIGNUP, UPLOAD
from stream.tools import events

# Every one is listed in the default policy (tests/unit/test_policy_load.py checks): generated events are
# judged by their own rules, never by the unknown-jurisdiction fallback (unit-tested in test_policy_decide).
JURISDICTIONS = ("DEFAULT", "EU", "GB", "US")
SURFACES = ("profile_photo", "messaging_unknown_adults", "adult_content", "live_streaming")
BAD_KINDS = ("random_bytes", "truncated_avro", "unknown_schema_id", "corrupt_frames", "zero_byte_frame")


HEAVY_USER_SHARE = 0.2  # users who upload tens of times
HEAVY_USER_WEIGHT = 8.0  # how many times more events a heavy user sends than a light one


@dataclass(slots=True)
class _User:
    id: str
    age: float
    look: float  # persistent apparent-age offset, years
    attrs: dict[str, str]
    jurisdiction: str
    seen: int = 0


@dataclass(frozen=True, slots=True)
class SyntheticEvent:
    role: str  # signups, uploads, feedback
    key: bytes
    value: bytes
    user_id: str
    true_age: float
    bad: str | None  # which kind of bad input, or None
    look: float = 0.0  # the user's persistent apparent-age offset (years; > 0 looks older)


def true_age_for(rng: np.random.Generator) -> float:
    """Every threshold's neighbourhood: 10-30 with most mass at 12-25 (13, 16, 18 and the buffers
    above them), plus older adults."""
    band = rng.random()
    if band < 0.12:
        return float(rng.uniform(10, 12))
    if band < 0.72:
        return float(rng.uniform(12, 25))
    if band < 0.85:
        return float(rng.uniform(25, 30))
    return float(rng.uniform(30, 60))


def synthetic_stream(
    n_events: int,
    *,
    seed: int = 0,
    bad_share: float = 0.0,
    start: float = 1_790_000_000.0,
    frames_per_event: int = 2,
    image_size: int = 64,
    user_prefix: str = "synth",
    events_per_user: int = 5,
    codec: AvroCodec | None = None,
) -> Iterator[SyntheticEvent]:
    codec = codec or AvroCodec()
    rng = np.random.default_rng(seed)
    n_users = max(1, n_events // events_per_user)
    users = [
        _User(
            f"{user_prefix}-{seed}-{i}",
            true_age_for(rng),
            float(rng.normal(0.0, SUBJECT_OFFSET_SD)),
            sample_attributes(rng),
            JURISDICTIONS[int(rng.integers(len(JURISDICTIONS)))],
        )
        for i in range(n_users)
    ]
    weights = np.where(rng.random(n_users) < HEAVY_USER_SHARE, HEAVY_USER_WEIGHT, 1.0)
    # Every user appears at least once (a signup), the rest of the events follow the weights.
    order = list(range(min(n_users, n_events)))
    order += list(rng.choice(n_users, size=n_events - len(order), p=weights / weights.sum()))
    for k, index in enumerate(order):
        user = users[int(index)]
        at = start + k * 0.5
        uid, age = user.id, user.age
        first = user.seen == 0
        user.seen += 1

        def frames(n: int, u: _User = user) -> list[dict[str, Any]]:
            return [
                events.inline_frame(
                    f"f{j}",
                    encode_jpeg(
                        render_face(u.age + u.look + rng.normal(0.0, IMAGE_NOISE_SD), u.attrs, rng, size=image_size),
                        rng,
                    ),
                )
                for j in range(n)
            ]

        if first:
            role, subject = "signups", SIGNUP
            declared = int(age) if rng.random() < 0.7 else int(age) + int(rng.integers(3, 10))
            record = events.signup(
                uid, at=at, jurisdiction=user.jurisdiction, declared_age=declared, frames=frames(frames_per_event)
            )
        elif rng.random() < 0.08:
            role, subject = "feedback", FEEDBACK
            record = events.feedback(uid, at=at, verified_age=round(age, 2), jurisdiction=user.jurisdiction)
        else:
            role, subject = "uploads", UPLOAD
            record = events.upload(
                uid,
                at=at,
                jurisdiction=user.jurisdiction,
                surface=SURFACES[int(rng.integers(len(SURFACES)))],
                frames=frames(frames_per_event),
            )
        record["event_id"] = _uuid(rng)
        bad = None
        if bad_share > 0 and rng.random() < bad_share:
            bad = BAD_KINDS[int(rng.integers(len(BAD_KINDS)))]
            value = _corrupt(bad, codec, subject, record, rng)
        else:
            value = codec.encode(subject, record)
        yield SyntheticEvent(role, uid.encode(), value, uid, age, bad, user.look)


def _uuid(rng: np.random.Generator) -> str:
    import uuid

    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _corrupt(kind: str, codec: AvroCodec, subject: str, record: dict[str, Any], rng: np.random.Generator) -> bytes:
    if kind == "random_bytes":
        return rng.bytes(int(rng.integers(1, 200)))
    if kind == "truncated_avro":
        good = codec.encode(subject, record)
        return good[: max(6, len(good) // 3)]
    if kind == "unknown_schema_id":
        good = codec.encode(subject, record)
        return b"\x00" + struct.pack(">I", 9000 + int(rng.integers(1000))) + good[5:]
    if subject == FEEDBACK:  # no frames to corrupt: make it undecodable instead
        return b"\x00" + struct.pack(">I", 9999) + codec.encode(subject, record)[5:]
    if not record["frames"]:
        record["frames"] = [events.inline_frame("f0", b"")]
    if kind == "corrupt_frames":
        record["frames"] = [events.inline_frame(f["frame_id"], rng.bytes(300)) for f in record["frames"]]
    else:  # zero_byte_frame
        record["frames"] = [events.inline_frame(f["frame_id"], b"") for f in record["frames"]]
    return codec.encode(subject, record)
