"""Test helpers around stream/tools/localrun.py: committed offsets and belief comparison."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.adapters.belief_store import user_key
from stream.adapters.topics import TopicAdmin
from stream.config import Settings, load_settings
from stream.tools.localrun import OutputReader, Outputs, WorkerProcess, free_port, worker_env

__all__ = ["OutputReader", "Outputs", "WorkerProcess", "free_port", "fresh_settings", "produce_raw", "worker_env"]


def fresh_settings(kafka_bootstrap: str, tag: str = "w") -> Settings:
    """Settings whose topics (created here) and consumer group belong to one test or module alone."""
    unique = f"{tag}{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        environ={}, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"{unique}.", consumer_group=f"g{unique}"
    )
    TopicAdmin(settings).create()
    return settings


def produce_raw(
    settings: Settings,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    *,
    partition: int = 0,
    compression: str = "none",
) -> list[int]:
    """Produce (key, value) pairs in order to one partition; returns their offsets once acknowledged."""
    producer = Producer(
        settings.kafka_client_config() | {"enable.idempotence": True, "linger.ms": 20, "compression.type": compression}
    )
    offsets: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err: Any, msg: Any, i: int) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets[i] = msg.offset()

    for i, (key, value) in enumerate(records):
        producer.produce(topic, value, key=key, partition=partition, on_delivery=functools.partial(delivered, i=i))
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, remaining
    assert not errors, errors[:3]
    return [offsets[i] for i in range(len(records))]


def committed_offsets(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer(settings.kafka_client_config() | {"group.id": settings.consumer_group})
    try:
        md = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in topics for p in md.topics[t].partitions]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def beliefs(redis_url: str, prefix: str, users: Iterable[str]) -> dict[str, Mapping[str, str]]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    out: dict[str, Mapping[str, str]] = {}
    for user in sorted(set(users)):
        fields: dict[str, str] = client.hgetall(user_key(prefix, user, "b"))  # type: ignore[assignment]
        out[user] = {k: v for k, v in fields.items() if k in {"B", "P", "n", "v", "t"}}
    return out


# Counts must match exactly (a double-counted or lost event changes them). Fused values match to
# what inference guarantees: float32 convolutions give slightly different outputs for different
# batch compositions (float32 resolution of an age near 35 is ~4e-6 years, ~2 minutes of birth
# time), so B agrees to an hour (~1e-4 years) and P to 1e-5. Evidence is dated at processing time
# (stream/pipeline/pipeline.py, the time rule), so two runs minutes apart differ in t and B by those minutes
# (an hour's tolerance) while n and P, which a lost or double-counted event would change, do not.
_TOLERANCE = {"B": (0.0, 3600.0), "P": (1e-5, 0.0), "t": (0.0, 3600.0)}


def assert_beliefs_equal(got: Mapping[str, Mapping[str, str]], want: Mapping[str, Mapping[str, str]]) -> None:
    assert set(got) == set(want)
    for user, fields in want.items():
        assert set(got[user]) == set(fields), user
        for name, value in fields.items():
            if fields.get("v") == "1" and name in {"n", "t"}:
                # Kafka orders one user's events within a topic, not across signups/uploads/feedback:
                # estimates arriving after a verified age are ignored, so how many were counted
                # before it depends on arrival order. The verified belief itself (B, P, v) does not.
                continue
            if name in {"n", "v"}:
                assert got[user][name] == value, (user, name)
            else:
                rel, absolute = _TOLERANCE[name]
                a, b = float(got[user][name]), float(value)
                assert abs(a - b) <= max(absolute, rel * abs(b)), (user, name, a, b)
