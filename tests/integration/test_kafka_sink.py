"""The Kafka sink against the real broker: a batch is awaited once and resolves only when every
message is acknowledged; a message the broker refuses fails the batch with DependencyUnavailable
(the driver then releases nothing of it, so it is redone: at-least-once)."""

from __future__ import annotations

import os

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.adapters.kafka_sink import KafkaSink
from stream.config import Settings
from stream.errors import DependencyUnavailable

pytestmark = pytest.mark.integration


def _create(settings: Settings, topic: str, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(topic, 1, 1, config=config or {})]).values():
        future.result(30)


def _read(settings: Settings, topic: str, n: int) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"{topic}-r", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    try:
        for msg in consumer.consume(num_messages=n, timeout=30):
            assert msg.error() is None
            headers: list[tuple[str, bytes]] = msg.headers() or []  # type: ignore[assignment]
            out.append((msg.key(), msg.value(), dict(headers)))
    finally:
        consumer.close()
    return out


async def test_a_batch_resolves_once_every_message_is_acknowledged_in_order(kafka_settings: Settings) -> None:
    topic = f"{kafka_settings.topic_prefix}sink"
    _create(kafka_settings, topic)
    sink = KafkaSink(kafka_settings)
    try:
        batch = [(topic, f"k{i}".encode(), f"v{i}".encode(), [("h", str(i).encode())]) for i in range(200)]
        await sink.send_all(batch)
        await sink.send_all([])  # an empty batch resolves at once
    finally:
        sink.close()
    got = _read(kafka_settings, topic, 200)
    assert got == [(key, value, dict(headers)) for _, key, value, headers in batch]


async def test_a_refused_message_fails_the_whole_batch_after_the_rest_settle(kafka_settings: Settings) -> None:
    topic = f"{kafka_settings.topic_prefix}small"
    _create(kafka_settings, topic, {"max.message.bytes": "2000"})
    sink = KafkaSink(kafka_settings)
    try:
        ok = [(topic, b"k", b"small", ()) for _ in range(5)]
        too_big = (topic, b"k", os.urandom(50_000), ())  # random bytes: lz4 cannot shrink them
        with pytest.raises(DependencyUnavailable, match="did not accept"):
            await sink.send_all([*ok, too_big, *ok])
    finally:
        sink.close()
