"""The real worker against a real Confluent-compatible Schema Registry (Apicurio, `infra.sh up registry`).

The load generator registers the event schemas and writes the registry's ids; the worker decodes
them through the registry, registers the decision schema under the decisions topic's subject
(TopicNameStrategy) and writes decisions framed with the registry's id, not the packaged
manifest's; Confluent's standard `AvroDeserializer` reads those decisions back, and so does
`agegate diff`'s reader. The registry refuses a breaking change once the subject's compatibility
is BACKWARD, and agegate reports that refusal as such. A registry that cannot be reached is an
outage (DependencyUnavailable), never a reason to dead-letter a valid event.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import ConfluentRegistry, RegistryRefused, record_topics, registry_from_settings
from stream.adapters.registry import LocalRegistry
from stream.adapters.topic_reader import read_to_end
from stream.adapters.topics import TopicAdmin, topic_name
from stream.config import Settings, load_settings
from stream.core.subjects import DECISION, FEEDBACK, SIGNUP, UPLOAD
from stream.errors import DependencyUnavailable
from stream.runners.diff import read_decision_topic
from stream.tools.produce import produce
from tests.support.worker_harness import OutputReader, WorkerProcess, free_port, worker_env

pytestmark = pytest.mark.integration

MANIFEST = LocalRegistry()
ROLE_OF = {SIGNUP: "signups", UPLOAD: "uploads", FEEDBACK: "feedback", DECISION: "decisions"}


@pytest.fixture(scope="module")
def client(schema_registry_url: str) -> SchemaRegistryClient:
    """The test's own client; first it files a few throwaway schemas, so that on a fresh registry the
    ids agegate's schemas get cannot coincide with the manifest's (1-5) by accident."""
    sr = SchemaRegistryClient({"url": schema_registry_url})
    tag = uuid.uuid4().hex[:8]
    for i in range(len(MANIFEST.versions(SIGNUP)) + 4):
        filler = {"type": "record", "name": f"Filler{tag}x{i}", "namespace": "agegate.test", "fields": []}
        sr.register_schema(f"filler-{tag}-value", Schema(json.dumps(filler), "AVRO"))
    return sr


@pytest.fixture
def settings(kafka_bootstrap: str, schema_registry_url: str, client: SchemaRegistryClient, unique_id: str) -> Settings:
    """This test's topics, group and registry subjects (`t<id>.<topic>-value`); producers auto-register."""
    s = load_settings(
        environ={},
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{unique_id}.",
        consumer_group=f"g{unique_id}",
        schema_registry_url=schema_registry_url,
        schema_auto_register=True,
    )
    TopicAdmin(s).create()
    return s


def framed_id(value: bytes) -> int:
    assert value[0] == 0
    return int(struct.unpack(">I", value[1:5])[0])


def registry_id(client: SchemaRegistryClient, settings: Settings, record_name: str) -> int:
    """What the registry itself says the id of the packaged schema is, under this test's subject."""
    subject = f"{topic_name(ROLE_OF[record_name], settings)}-value"
    found = client.lookup_schema(subject, Schema(MANIFEST.writer_for(record_name).definition, "AVRO"))
    assert found.schema_id is not None
    return int(found.schema_id)


@pytest.fixture
def worker(settings: Settings, tiny_model: Path, redis_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    env = worker_env(settings, model=tiny_model, redis_url=redis_url, redis_prefix=f"sr{uuid.uuid4().hex[:6]}")
    assert env["SCHEMA_REGISTRY_URL"] == settings.schema_registry_url  # the worker uses the same registry
    proc = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_worker_decodes_registry_ids_and_writes_decisions_with_them(
    settings: Settings, client: SchemaRegistryClient, worker: WorkerProcess
) -> None:
    reader = OutputReader(settings)
    try:
        sent = produce(settings, n=30, seed=7, bad_share=0.2, frames=1)  # the load generator (`agegate produce`)
        outputs = reader.poll_until({p.idempotency_key for p in sent}, timeout=180)
    finally:
        reader.close()
    good = [p for p in sent if p.event.bad is None]
    assert 0 < len(good) < len(sent)

    # The load generator registered the event schemas and framed its events with the registry's ids.
    subjects = set(client.get_subjects())
    assert {f"{topic_name(r, settings)}-value" for r in ("signups", "uploads", "decisions")} <= subjects
    event_ids = {framed_id(p.event.value) for p in good}
    expected_ids = {
        registry_id(client, settings, rec)
        for rec in (SIGNUP, UPLOAD, FEEDBACK)
        if f"{topic_name(ROLE_OF[rec], settings)}-value" in subjects
    }
    assert event_ids <= expected_ids
    assert event_ids.isdisjoint({s.schema_id for s in MANIFEST._by_id.values()} - expected_ids)

    # The worker decoded every good event through the registry; only bad input was dead-lettered.
    decided = {p.idempotency_key for p in good}
    assert decided <= set(outputs.decisions), worker.tail()
    assert not decided & set(outputs.dead_letters)
    for p in sent:
        if p.event.bad == "unknown_schema_id":  # an id no registry holds: the event's fault
            assert outputs.dead_letters[p.idempotency_key][0]["reason"] == "unknown_schema_id"

    # Decisions carry the registry's id for the decisions subject, not the manifest's.
    decision_id = registry_id(client, settings, DECISION)
    assert decision_id != MANIFEST.writer_for(DECISION).schema_id
    topic = topic_name("decisions", settings)
    raw = [m.value() for m in read_to_end(settings, topic, group=f"raw-{uuid.uuid4().hex[:6]}")]
    values = [v for v in raw if isinstance(v, bytes)]
    assert len(values) >= len(decided)
    assert {framed_id(v) for v in values} == {decision_id}

    # Confluent's standard deserializer reads them with nothing but the registry.
    deserialize = AvroDeserializer(client)
    read_back = [deserialize(v, SerializationContext(topic, MessageField.VALUE)) for v in values]
    assert decided <= {d["idempotency_key"] for d in read_back if d is not None}
    assert {d["action"] for d in read_back if d is not None} <= {"ALLOW", "REQUIRE_VERIFICATION", "RESTRICT", "BLOCK"}

    # `agegate diff` reads recorded decisions by id through the configured registry too.
    assert decided <= {d["idempotency_key"] for d in read_decision_topic(settings, topic)}


def test_a_breaking_change_is_refused_once_compatibility_is_backward(
    settings: Settings, client: SchemaRegistryClient, tmp_path: Path
) -> None:
    subject = f"{topic_name('decisions', settings)}-value"
    current = MANIFEST.writer_for(DECISION)
    client.register_schema(subject, Schema(current.definition, "AVRO"))
    client.set_compatibility(subject, "BACKWARD")
    breaking = json.loads(current.definition)
    breaking["fields"].append({"name": "new_required_field", "type": "string"})  # no default: old data unreadable
    with pytest.raises(SchemaRegistryError) as caught:
        client.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))
    assert caught.value.http_status_code == 409
    assert len(client.get_versions(subject)) == 1

    # agegate's own registration (`agegate schemas register`) names the refusal, and registers nothing.
    root = tmp_path / "schemas"
    (root / "d").mkdir(parents=True)
    (root / "d" / "v1.avsc").write_text(current.definition)
    (root / "d" / "v2.avsc").write_text(json.dumps(breaking))
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "schemas": [
                    {"id": 1, "subject": DECISION, "version": 1, "file": "d/v1.avsc"},
                    {"id": 2, "subject": DECISION, "version": 2, "file": "d/v2.avsc"},
                ]
            }
        )
    )
    ours = ConfluentRegistry(
        SchemaRegistryClient(settings.schema_registry_client_config()),
        topics=record_topics(settings),
        compatibility="BACKWARD",
        local=LocalRegistry(root),
    )
    with pytest.raises(RegistryRefused, match=r"refused registering agegate\.decisions\.PolicyDecision under"):
        ours.register(DECISION)
    assert len(client.get_versions(subject)) == 1

    # A compatible change (a new optional field with a default) is accepted.
    compatible = json.loads(current.definition)
    compatible["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    client.register_schema(subject, Schema(json.dumps(compatible), "AVRO"))
    assert len(client.get_versions(subject)) == 2


def test_without_auto_register_an_unregistered_schema_is_refused_then_register_makes_it_resolvable(
    settings: Settings, client: SchemaRegistryClient
) -> None:
    strict = dataclasses.replace(settings, schema_auto_register=False)
    with pytest.raises(RegistryRefused, match="auto-registration is off"):
        AvroCodec(registry_from_settings(strict)).registry.writer_for(UPLOAD)
    registry = registry_from_settings(strict)
    assert isinstance(registry, ConfluentRegistry)
    registered = registry.register(SIGNUP)  # what `agegate schemas register` does per record type
    assert len(client.get_versions(f"{topic_name('signups', settings)}-value")) == len(MANIFEST.versions(SIGNUP))
    assert registry_from_settings(strict).writer_for(SIGNUP).schema_id == registered.schema_id


def test_an_unreachable_registry_is_an_outage_not_bad_input(settings: Settings) -> None:
    down = dataclasses.replace(settings, schema_registry_url=f"http://127.0.0.1:{free_port()}/apis/ccompat/v7")
    codec = AvroCodec(registry_from_settings(down))
    valid = AvroCodec(registry_from_settings(settings)).encode(UPLOAD, _upload())
    with pytest.raises(DependencyUnavailable, match="schema registry unreachable"):
        codec.decode(valid, UPLOAD)  # the worker must retry this event, never dead-letter it
    with pytest.raises(DependencyUnavailable):
        codec.encode(DECISION, {})


def _upload() -> dict[str, object]:
    from stream.tools import events

    return events.upload(
        "u1", at=1_790_000_000.0, surface="profile_photo", frames=[events.inline_frame("f0", b"\xff\xd8jpeg")]
    )


def test_registry_credentials_in_the_url_never_reach_the_logs(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex[:6]}"
    with_user_info = settings.schema_registry_url.replace("http://", f"http://agegate:{secret}@", 1)
    caplog.set_level(logging.DEBUG)  # everything any library logs, at any level
    codec = AvroCodec(registry_from_settings(dataclasses.replace(settings, schema_registry_url=with_user_info)))
    data = codec.encode(UPLOAD, _upload())  # registers, then looks up: several HTTP requests
    assert codec.decode(data, UPLOAD).record["user_id"] == "u1"
    assert not [r for r in caplog.records if secret in r.getMessage()]
