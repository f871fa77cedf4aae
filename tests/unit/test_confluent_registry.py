"""The registry adapter sorts every registry answer by whose fault it is (pure logic; a stub client).

The real registry is exercised in tests/integration/test_schema_registry.py; here each failure the
network can produce is forced, which a real registry cannot be made to do on demand.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from confluent_kafka.schema_registry import RegisteredSchema, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import ConfluentRegistry, RegistryRefused, subject_name
from stream.adapters.registry import LocalRegistry
from stream.core.subjects import DECISION, SIGNUP, UPLOAD
from stream.errors import DecodeError, DependencyUnavailable
from tests.unit.test_codec import decision_record

TOPICS = {SIGNUP: "p.signups", UPLOAD: "p.uploads", DECISION: "p.decisions"}
LOCAL = LocalRegistry()


class ConnectError(Exception):
    """Stands in for the HTTP library's transport error."""


class StubClient:
    """Answers from a dict, or raises what a test puts in `fail`; records the calls made."""

    def __init__(self) -> None:
        self.by_id: dict[int, Schema] = {}
        self.subjects: dict[tuple[str, str], int] = {}  # (subject, schema text) -> id
        self.fail: BaseException | None = None
        self.calls: list[tuple[str, Any]] = []
        self.compatibility: dict[str, str] = {}

    def _maybe_fail(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if self.fail is not None:
            raise self.fail

    def get_schema(self, schema_id: int) -> Schema:
        self._maybe_fail("get_schema", schema_id)
        if schema_id not in self.by_id:
            raise SchemaRegistryError(404, 40403, "not found")
        return self.by_id[schema_id]

    def lookup_schema(self, subject: str, schema: Schema) -> RegisteredSchema:
        self._maybe_fail("lookup_schema", subject)
        key = (subject, schema.schema_str or "")
        if key not in self.subjects:
            raise SchemaRegistryError(404, 40401, "subject not found")
        schema_id = self.subjects[key]
        return RegisteredSchema(schema_id=schema_id, guid=None, schema=schema, subject=subject, version=1)

    def register_schema(self, subject: str, schema: Schema) -> int:
        self._maybe_fail("register_schema", subject)
        key = (subject, schema.schema_str or "")
        if key not in self.subjects:
            self.subjects[key] = 100 + len(self.subjects)
            self.by_id[self.subjects[key]] = schema
        return self.subjects[key]

    def set_compatibility(self, subject: str, level: str) -> dict[str, str]:
        self._maybe_fail("set_compatibility", subject)
        self.compatibility[subject] = level
        return {"compatibility": level}


def registry(client: StubClient, **kwargs: Any) -> ConfluentRegistry:
    return ConfluentRegistry(client, topics=TOPICS, **kwargs)  # type: ignore[arg-type]


def framed(schema_id: int, body: bytes = b"") -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


def test_subject_naming_strategies() -> None:
    assert subject_name("topic_name", SIGNUP, "p.signups") == "p.signups-value"
    assert subject_name("record_name", SIGNUP, "p.signups") == SIGNUP
    with pytest.raises(ValueError, match="unknown subject naming strategy"):
        registry(StubClient(), strategy="topic_record_name")


def test_auto_register_files_the_packaged_schema_under_the_topic_subject_and_caches_the_id() -> None:
    client = StubClient()
    reg = registry(client, auto_register=True, compatibility="BACKWARD")
    first = reg.writer_for(DECISION)
    assert first.schema_id == client.subjects[("p.decisions-value", LOCAL.writer_for(DECISION).definition)]
    assert first.subject == DECISION  # the codec's record name, whatever the registry subject
    assert client.compatibility == {"p.decisions-value": "BACKWARD"}
    calls = len(client.calls)
    assert reg.writer_for(DECISION) is first
    assert reg.by_id(first.schema_id) is first
    assert len(client.calls) == calls  # cached: no second request


def test_without_auto_register_a_missing_schema_is_a_refusal_naming_the_fix() -> None:
    reg = registry(StubClient(), strategy="record_name")
    with pytest.raises(RegistryRefused) as caught:
        reg.writer_for(SIGNUP)
    assert f"subject {SIGNUP} has no schema" in str(caught.value)
    assert "`agegate schemas register`" in str(caught.value)


def test_without_auto_register_an_existing_schema_is_looked_up_not_registered() -> None:
    client = StubClient()
    client.subjects[("p.uploads-value", LOCAL.writer_for(UPLOAD).definition)] = 42
    assert registry(client).writer_for(UPLOAD).schema_id == 42
    assert [name for name, _ in client.calls] == ["lookup_schema"]


def test_register_files_every_packaged_version_oldest_first() -> None:
    client = StubClient()
    newest = registry(client).register(SIGNUP)
    registered = [text for (subject, text) in client.subjects if subject == "p.signups-value"]
    assert registered == [s.definition for s in LOCAL.versions(SIGNUP)]
    assert newest.version == LOCAL.writer_for(SIGNUP).version


@pytest.mark.parametrize(
    "failure",
    [
        ConnectError("connection refused"),
        TimeoutError("timed out"),
        SchemaRegistryError(503, -1, "unavailable"),
        SchemaRegistryError(429, -1, "slow down"),
        SchemaRegistryError(500, 50001, "store error"),
    ],
)
def test_an_outage_is_a_dependency_failure_never_a_decode_error(failure: BaseException) -> None:
    client = StubClient()
    client.fail = failure
    codec = AvroCodec(registry(client, auto_register=True))
    with pytest.raises(DependencyUnavailable, match="schema registry"):
        codec.decode(framed(7, b"\x02"), UPLOAD)  # a valid event must not be dead-lettered for it
    with pytest.raises(DependencyUnavailable):
        codec.encode(DECISION, {})


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_a_refusal_not_an_outage_or_bad_input(status: int) -> None:
    client = StubClient()
    client.fail = SchemaRegistryError(status, -1, "nope")
    with pytest.raises(RegistryRefused, match="refused our credentials"):
        AvroCodec(registry(client)).decode(framed(7), UPLOAD)


def test_an_unknown_id_is_the_events_fault_and_is_asked_again_later() -> None:
    client = StubClient()
    codec = AvroCodec(registry(client))
    with pytest.raises(DecodeError) as caught:
        codec.decode(framed(9999, b"\x00"), UPLOAD)
    assert caught.value.reason == "unknown_schema_id"
    codec.registry.by_id(9999)
    assert [c for c in client.calls if c == ("get_schema", 9999)] == [("get_schema", 9999)] * 2  # not cached


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (Schema('{"type": "object"}', "JSON"), "JSON schema, not Avro"),
        (Schema('"string"', "AVRO"), "not an Avro record"),
        (
            Schema('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}', "AVRO"),
            "not a valid Avro schema",
        ),
    ],
)
def test_an_id_that_is_not_an_avro_record_is_dead_lettered_as_unexpected(schema: Schema, why: str) -> None:
    client = StubClient()
    client.by_id[7] = schema
    with pytest.raises(DecodeError, match=why) as caught:
        AvroCodec(registry(client)).decode(framed(7, b"\x00"), UPLOAD)
    assert caught.value.reason == "unexpected_schema"


def test_a_record_of_another_type_under_a_registry_id_is_unexpected_schema() -> None:
    client = StubClient()
    reg = registry(client, auto_register=True)
    codec = AvroCodec(reg)
    data = codec.encode(DECISION, decision_record())
    assert struct.unpack(">I", data[1:5])[0] == reg.writer_for(DECISION).schema_id  # the registry's id
    with pytest.raises(DecodeError) as caught:
        codec.decode(data, UPLOAD)
    assert caught.value.reason == "unexpected_schema"
    assert codec.decode(data, DECISION).record["idempotency_key"] == decision_record()["idempotency_key"]
