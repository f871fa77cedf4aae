"""Avro events of every kind through the real broker, and the topic declaration against it."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer

from stream.adapters.codec import AvroCodec
from stream.adapters.topics import TOPICS, TopicAdmin, topic_name
from stream.config import Settings
from stream.core.subjects import FEEDBACK, SIGNUP, UPLOAD
from stream.tools import events

pytestmark = pytest.mark.integration


def test_topics_create_is_idempotent_and_describe_matches(kafka_settings: Settings) -> None:
    admin = TopicAdmin(kafka_settings)
    first = dict(admin.create())
    assert set(first.values()) == {"created"}
    assert set(first) == {topic_name(spec.role, kafka_settings) for spec in TOPICS}
    second = dict(admin.create())
    assert set(second.values()) == {"exists"}  # nothing changed, nothing differs
    for state in admin.describe():
        assert state.exists
        assert state.partitions == state.declared.partitions
        assert state.differences(kafka_settings.topic_replication_factor) == []


def test_events_of_every_kind_round_trip_through_the_broker(kafka_settings: Settings) -> None:
    TopicAdmin(kafka_settings).create()
    codec = AvroCodec()
    now = time.time()
    sent = {
        "signups": (
            SIGNUP,
            events.signup("user-a", at=now, declared_age=14, frames=[events.inline_frame("f0", b"\xff\xd8\xff")]),
        ),
        "uploads": (
            UPLOAD,
            events.upload(
                "user-a", at=now, surface="adult_content", frames=[events.uri_frame("f0", "file:///frames/x.jpg")]
            ),
        ),
        "feedback": (FEEDBACK, events.feedback("user-a", at=now, verified_age=14.2)),
    }
    producer = Producer(kafka_settings.kafka_client_config() | {"enable.idempotence": True})
    for role, (subject, record) in sent.items():
        producer.produce(topic_name(role, kafka_settings), codec.encode(subject, record), key=b"user-a")
    assert producer.flush(30) == 0

    consumer = Consumer(
        kafka_settings.kafka_client_config()
        | {"group.id": kafka_settings.consumer_group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([topic_name(role, kafka_settings) for role in sent])
    received: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            decoded = codec.decode(msg.value())
            assert msg.key() == b"user-a"
            received[decoded.subject] = decoded.record
    finally:
        consumer.close()
    assert set(received) == {SIGNUP, UPLOAD, FEEDBACK}
    assert received[SIGNUP]["declared_age"] == 14
    assert received[SIGNUP]["frames"][0]["source"]["data"] == b"\xff\xd8\xff"
    assert received[UPLOAD]["frames"][0]["source"]["uri"] == "file:///frames/x.jpg"
    assert received[FEEDBACK]["verified_age"] == pytest.approx(14.2)
    for subject, record in sent.values():
        assert str(received[subject]["event_id"]) == record["event_id"]
