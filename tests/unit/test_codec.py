"""The Confluent/Avro codec: round trips, and every kind of bad input as a typed DecodeError."""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.adapters.codec import AvroCodec
from stream.adapters.registry import LocalRegistry, RegisteredSchema
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


class ProducerRegistry:
    """The packaged schemas, plus one a producer registered under its own id (a newer version)."""

    def __init__(self, extra: RegisteredSchema) -> None:
        self.local = LocalRegistry()
        self.extra = extra

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        return self.extra if schema_id == self.extra.schema_id else self.local.by_id(schema_id)

    def writer_for(self, subject: str) -> RegisteredSchema:
        return self.extra if subject == self.extra.subject else self.local.writer_for(subject)


def producer_schema(field: dict[str, Any], *, drop: str | None = None) -> RegisteredSchema:
    """The packaged feedback schema with a field added (and optionally one removed), as id 900."""
    ours = LocalRegistry().writer_for(FEEDBACK)
    declared = json.loads(ours.definition)
    declared["fields"] = [f for f in declared["fields"] if f["name"] != drop] + [field]
    return RegisteredSchema(900, FEEDBACK, ours.version + 1, json.dumps(declared))


def test_a_newer_producers_record_is_read_as_our_version_of_it() -> None:
    # A writer schema that differs from ours goes through fastavro's resolution; one that is the
    # same (every other test here) skips it, and both must give our version's record.
    newer = producer_schema({"name": "channel", "type": "string", "default": "web"})
    shared = AvroCodec(ProducerRegistry(newer))  # producer and worker see the same registry
    record = {**SAMPLES[FEEDBACK], "channel": "app"}
    decoded = shared.decode(shared.encode(FEEDBACK, record), FEEDBACK)
    assert decoded.schema_id == 900
    assert decoded.record == codec.decode(codec.encode(FEEDBACK, SAMPLES[FEEDBACK])).record
    assert "channel" not in decoded.record


def test_a_producers_schema_we_cannot_read_is_incompatible_schema() -> None:
    # Our reader needs `verified_age` (no default); a writer without it cannot be read as ours.
    ours = json.loads(LocalRegistry().writer_for(FEEDBACK).definition)
    required = next(f for f in ours["fields"] if f["name"] == "verified_age")
    assert "default" not in required
    broken = producer_schema({"name": "age_years", "type": "double"}, drop="verified_age")
    record = {k: v for k, v in SAMPLES[FEEDBACK].items() if k != "verified_age"} | {"age_years": 16.5}
    shared = AvroCodec(ProducerRegistry(broken))
    data = shared.encode(FEEDBACK, record)
    with pytest.raises(DecodeError) as info:
        shared.decode(data, FEEDBACK)
    assert info.value.reason == "incompatible_schema"
    assert info.value.raw == data


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
