"""The Confluent/Avro codec: round trips, and every kind of bad input as a typed DecodeError."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.adapters.codec import AvroCodec
from stream.adapters.registry import LocalRegistry
from stream.core.subjects import DECISION, FEEDBACK, SIGNUP, UPLOAD
from stream.errors import DecodeError
from stream.tools import events

NOW = 1_790_000_000.0
codec = AvroCodec()


def decision_record() -> dict:
    return {
        "decision_id": "6a1f6f4e-7f0e-4a43-a2a4-111111111111",
        "idempotency_key": "agegate.signups/3/17",
        "user_id": "u1",
        "event_id": "e1",
        "event_type": "SignupEvent",
        "source_topic": "agegate.signups",
        "source_partition": 3,
        "source_offset": 17,
        "jurisdiction": "US",
        "surface": "account_creation",
        "action": "ALLOW",
        "reason_codes": ["estimate_above_threshold"],
        "evidence": {
            "age_mean": 30.0,
            "age_std": 2.0,
            "observations": 2,
            "threshold": 13.0,
            "buffer": 2.0,
            "p_at_least_threshold": 0.99,
            "verified": False,
            "declared_age": None,
            "frames_scored": 2,
            "frames_failed": 0,
        },
        "model_version": "age_regressor@1",
        "policy_version": "2026-11-01",
        "event_time": events.utc_ms(NOW),
        "decided_at": events.utc_ms(NOW + 1),
    }


SAMPLES = {
    SIGNUP: events.signup(
        "u1",
        at=NOW,
        declared_age=15,
        frames=[events.inline_frame("f0", b"\xff\xd8jpeg"), events.uri_frame("f1", "file:///store/a.jpg")],
    ),
    UPLOAD: events.upload(
        "u1", at=NOW, surface="profile_photo", frames=[events.inline_frame("f0", b"png", "image/png")]
    ),
    FEEDBACK: events.feedback("u1", at=NOW, verified_age=16.5),
    DECISION: decision_record(),
}


@pytest.mark.parametrize("subject", list(SAMPLES))
def test_round_trip_every_subject(subject: str) -> None:
    data = codec.encode(subject, SAMPLES[subject])
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == LocalRegistry().writer_for(subject).schema_id
    decoded = codec.decode(data, subject)
    assert decoded.subject == subject
    for key, value in SAMPLES[subject].items():
        assert str(decoded.record[key]) == str(value), key


def test_inline_and_uri_frames_keep_their_shape() -> None:
    frames = codec.decode(codec.encode(SIGNUP, SAMPLES[SIGNUP]), SIGNUP).record["frames"]
    assert frames[0]["source"] == {"content_type": "image/jpeg", "data": b"\xff\xd8jpeg"}
    assert frames[1]["source"] == {"uri": "file:///store/a.jpg", "content_type": None}


GOOD = codec.encode(SIGNUP, SAMPLES[SIGNUP])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x00", "truncated_header"),
        (b"\x01" + GOOD[1:], "bad_magic"),
        (b"\x00" + struct.pack(">I", 9999) + GOOD[5:], "unknown_schema_id"),
        (GOOD[: len(GOOD) // 2], "truncated_body"),
        (GOOD + b"\x00\x01", "trailing_bytes"),
        # A bytes field whose zig-zag varint length claims ~2^62 bytes: refused, nothing allocated.
        (
            GOOD[:5] + b"\x48" + b"6a1f6f4e-7f0e-4a43-a2a4-111111111111" + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f",
            "truncated_body",
        ),
        # The same field declaring a negative length (zig-zag 0x01 is -1): a read of "everything
        # left" must not pass for it.
        (GOOD[:5] + b"\x01" + GOOD[6:], "truncated_body"),
    ],
)
def test_bad_input_is_a_typed_error_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(data, SIGNUP)
    assert info.value.reason == reason
    assert info.value.raw == data  # a dead letter keeps the original bytes


def test_body_of_another_schema_is_refused_on_this_topic() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(codec.encode(UPLOAD, SAMPLES[UPLOAD]), [SIGNUP])
    assert info.value.reason == "unexpected_schema"
    assert info.value.schema_id == LocalRegistry().writer_for(UPLOAD).schema_id


def test_another_schemas_body_under_this_schema_id_does_not_decode() -> None:
    upload_body = codec.encode(UPLOAD, SAMPLES[UPLOAD])[5:]
    forged = b"\x00" + struct.pack(">I", LocalRegistry().writer_for(FEEDBACK).schema_id) + upload_body
    with pytest.raises(DecodeError) as info:
        codec.decode(forged, FEEDBACK)
    assert info.value.reason in {"body_mismatch", "truncated_body", "trailing_bytes"}


def test_oversized_message_is_refused_before_parsing() -> None:
    small = AvroCodec(max_message_bytes=64)
    with pytest.raises(DecodeError) as info:
        small.decode(GOOD + b"\x00" * 100)
    assert info.value.reason == "too_large"


def test_ten_thousand_random_byte_strings_give_only_typed_errors() -> None:
    rng = random.Random(20261125)
    ids = [s.schema_id for s in LocalRegistry()._by_id.values()]
    outcomes: dict[str, int] = {}
    for i in range(10_000):
        body = rng.randbytes(rng.randint(0, 80))
        # Half of them get a valid header, so the Avro body parser sees random bytes too.
        data = body if i % 2 else b"\x00" + struct.pack(">I", rng.choice(ids)) + body
        try:
            codec.decode(data)
            outcomes["decoded"] = outcomes.get("decoded", 0) + 1
        except DecodeError as exc:
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
    assert sum(outcomes.values()) == 10_000
    assert {"empty", "bad_magic", "truncated_body"} <= outcomes.keys(), outcomes


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([1, 2, 3, 4, 5, 77]))
def test_property_random_bodies_never_raise_anything_else(body: bytes, schema_id: int) -> None:
    for data in (body, b"\x00" + struct.pack(">I", schema_id) + body):
        try:
            decoded = codec.decode(data)
        except DecodeError as exc:
            assert exc.reason
            assert exc.raw == data
        else:
            assert decoded.schema_id == schema_id
