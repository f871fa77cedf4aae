"""Retained frames on the real broker: `datasets from-feedback` joins them with verified ages, and an
erasure removes the belief from Redis at once and tombstones the frames, which are gone from the
topic after compaction (and ignored by readers before it)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from PIL import Image

from model.data.manifest import load_manifest
from stream.adapters.belief_store import BeliefStore
from stream.adapters.codec import AvroCodec
from stream.adapters.registry import FEEDBACK, RETAINED_FRAME, LocalRegistry
from stream.adapters.topics import DAY_MS, TopicAdmin, topic_name
from stream.config import Settings
from stream.core.retention import frame_key, key_user
from stream.tools.erasure import erase
from stream.tools.feedback_dataset import build

pytestmark = pytest.mark.integration

NOW = time.time()
DAY = 86400.0
PARTITIONS = 12


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (shade, 255 - shade, 80)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def settings(kafka_settings: Settings, redis_url: str, unique_id: str) -> Settings:
    s = dataclasses.replace(kafka_settings, redis_url=redis_url, redis_key_prefix=f"t{unique_id}")
    # The retained-frames topic as declared, with a cleaner that runs within seconds (test only).
    admin = AdminClient(s.kafka_client_config())
    name = topic_name("retained_frames", s)
    config = {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(int(s.retained_frames_retention_days * DAY_MS)),
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0",
    }
    for fut in admin.create_topics(
        [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1, config=config)]
    ).values():
        fut.result(timeout=30)
    TopicAdmin(s).create()
    return s


def _produce(s: Settings, records: list[tuple[str, bytes, bytes | None]], partition: int | None = None) -> None:
    producer = Producer(s.kafka_client_config() | {"acks": "all"})
    for topic, key, value in records:
        if partition is None:
            producer.produce(topic, key=key, value=value)
        else:
            producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def _retained(s: Settings, codec: AvroCodec, user: str, n: int, shade: int) -> list[tuple[str, bytes, bytes | None]]:
    out: list[tuple[str, bytes, bytes | None]] = []
    for i in range(n):
        event = str(uuid.uuid4())
        record = {
            "user_id": user,
            "event_id": event,
            "frame_id": "f0",
            "occurred_at": dt.datetime.fromtimestamp(NOW - (i + 1) * DAY, dt.UTC),
            "content_type": "image/jpeg",
            "data": _jpeg(shade + 7 * i),
        }
        out.append(
            (topic_name("retained_frames", s), frame_key(user, event, "f0"), codec.encode(RETAINED_FRAME, record))
        )
    return out


def _feedback(s: Settings, codec: AvroCodec, user: str, age: float) -> tuple[str, bytes, bytes | None]:
    record = {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "occurred_at": dt.datetime.fromtimestamp(NOW, dt.UTC),
        "verified_age": age,
        "method": "ID_CHECK",
        "jurisdiction": None,
    }
    return topic_name("feedback", s), user.encode(), codec.encode(FEEDBACK, record)


def _values_of(s: Settings, user: str) -> int:
    """Non-null records of the user still stored in the topic, read raw from the start."""
    consumer = Consumer(s.kafka_client_config() | {"group.id": f"raw-{uuid.uuid4().hex}", "enable.auto.commit": False})
    topic = topic_name("retained_frames", s)
    try:
        ends = {}
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        found, deadline = 0, time.monotonic() + 30
        while ends and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                    if (tp.offset or 0) >= ends[tp.partition]:
                        del ends[tp.partition]
                continue
            part, offset = m.partition(), m.offset()
            if m.error() is None and part is not None and offset is not None:
                if key_user(m.key()) == user and m.value() is not None:
                    found += 1
                if offset + 1 >= ends.get(part, 0):
                    ends.pop(part, None)
        return found
    finally:
        consumer.close()


async def _belief_exists(s: Settings, user: str, *, verify_first: bool) -> bool:
    client = aioredis.Redis.from_url(s.redis_url)
    try:
        store = BeliefStore(client, prefix=s.redis_key_prefix, half_life_s=365 * DAY, ttl_s=400 * DAY)
        if verify_first:
            await store.apply_verified(user, event_id=str(uuid.uuid4()), verified_age=31.0, verified_at=NOW, now=NOW)
        return (await store.get_many([user], now=NOW))[user] is not None
    finally:
        await client.aclose()


def test_feedback_dataset_and_erasure_on_the_real_broker_and_redis(settings: Settings, tmp_path: Path) -> None:
    s = settings
    codec = AvroCodec(LocalRegistry())
    alice, bob, carol, dave = (f"user-{uuid.uuid4().hex[:8]}" for _ in range(4))
    frames = [*_retained(s, codec, alice, 3, 10), *_retained(s, codec, bob, 2, 90), *_retained(s, codec, carol, 2, 150)]
    verified = [_feedback(s, codec, alice, 24.0), _feedback(s, codec, bob, 31.0), _feedback(s, codec, dave, 40.0)]
    _produce(s, [*frames, *verified])

    before = build(s, tmp_path / "before", now=NOW)
    assert before["report"]["frames_read"] == 7
    assert before["report"]["frames_used"] == 5  # alice 3, bob 2
    assert before["report"]["skipped_frames"] == {"no_verification": 2}  # carol never verified
    assert before["report"]["verified_without_frames"] == 1  # dave: no consent, nothing retained
    assert before["report"]["users_used"] == 2

    assert asyncio.run(_belief_exists(s, bob, verify_first=True))
    result = erase(s, [bob])
    assert result.tombstones == 2
    assert not asyncio.run(_belief_exists(s, bob, verify_first=False))  # gone at once

    after = build(s, tmp_path / "after", now=NOW)  # tombstones honoured before any compaction
    assert after["report"]["frames_used"] == 3
    assert after["report"]["reader"]["retained_erased"] == 2
    rows = load_manifest(tmp_path / "after" / "manifest.csv").rows
    assert len({r.subject_id for r in rows}) == 1
    assert erase(s, [bob]).tombstones == 0  # nothing left to tombstone

    # Compaction removes the frames' bytes: roll every partition's segment until the cleaner ran.
    deadline = time.monotonic() + 120
    while _values_of(s, bob) and time.monotonic() < deadline:
        for p in range(PARTITIONS):
            _produce(s, [(topic_name("retained_frames", s), frame_key("filler", uuid.uuid4().hex, "f"), b"x")], p)
        time.sleep(1.0)  # let segment.ms pass before the next roll (a poll interval, not an assertion)
    assert _values_of(s, bob) == 0
    assert _values_of(s, alice) == 3  # compaction keeps every frame of a user who was not erased
