"""Shared by the replay, redrive and shadow integration tests: a tiny model, a produced history, and a
stand-in for the worker (the lead's worker harness replaces it once it exists): the same Pipeline
driven from a confluent-kafka loop, its decisions acknowledged on the real decisions topic."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
import torch
from confluent_kafka import Consumer, Producer

from model.checkpoint import save_checkpoint
from model.data.synthetic import encode_jpeg, render_face, sample_attributes
from model.engine import InferenceEngine
from model.models import create_model
from stream.belief_store import BeliefStore
from stream.codec import AvroCodec
from stream.config import Settings
from stream.kafka_sink import KafkaSink
from stream.pipeline.pipeline import InvalidShareGuard, Outcome
from stream.policy import Policy
from stream.registry import FEEDBACK, SIGNUP, UPLOAD
from stream.runners.replay import MergedReader, PartitionWindow
from stream.pipeline.assemble import DAY_S, assemble
from stream.topics import topic_names

SUBJECT = {"signups": SIGNUP, "uploads": UPLOAD, "feedback": FEEDBACK}


def tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("age_regressor", width=8, version=f"s{seed}")
    return save_checkpoint(out_dir / f"tiny-{seed}.safetensors", model)


def face(age: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(render_face(age, sample_attributes(rng), rng), rng)


def produce(settings: Settings, events: Sequence[tuple[str, dict[str, Any]]], *,
            raw: dict[int, bytes] | None = None) -> None:
    """Produce (role, record) pairs keyed by user id, Kafka timestamp = event time; `raw` replaces the
    bytes of the i-th event (e.g. a broken schema id)."""
    codec = AvroCodec()
    names = topic_names(settings)
    producer = Producer(settings.kafka_client_config() | {"enable.idempotence": True, "acks": "all"})
    for i, (role, record) in enumerate(events):
        value = (raw or {}).get(i) or codec.encode(SUBJECT[role], record)
        producer.produce(names[role], key=record["user_id"].encode(), value=value,
                         timestamp=int(record["occurred_at"].timestamp() * 1000))
    assert producer.flush(30) == 0


def source_windows(settings: Settings) -> list[PartitionWindow]:
    names = topic_names(settings)
    c = Consumer(settings.kafka_client_config() | {"group.id": "test-windows"})
    try:
        out = []
        for role in ("signups", "uploads", "feedback"):
            meta = c.list_topics(names[role], timeout=10).topics[names[role]]
            for p in sorted(meta.partitions):
                from confluent_kafka import TopicPartition
                low, high = c.get_watermark_offsets(TopicPartition(names[role], p), timeout=10, cached=False)
                out.append(PartitionWindow(names[role], p, low, high))
        return out
    finally:
        c.close()


async def run_live(settings: Settings, engine: InferenceEngine, policy: Policy, *, codec: AvroCodec | None = None,
                   windows: Sequence[PartitionWindow] | None = None) -> list[Outcome]:
    """Process the source topics' current content like the worker: production prefix, real sink."""
    client = aioredis.Redis.from_url(settings.redis_url)
    store = BeliefStore(client, prefix=settings.redis_key_prefix, half_life_s=settings.belief_half_life_days * DAY_S,
                        ttl_s=settings.belief_ttl_days * DAY_S)
    sink = KafkaSink(settings)
    assembled = assemble(settings, engine=engine, store=store, sink=sink, policy=policy)
    if codec is not None:
        assembled.pipeline.codec = codec
    assembled.pipeline.guard = InvalidShareGuard(1.0, 1)
    assembled.batcher.start()
    consumer = Consumer(settings.kafka_client_config() | {"group.id": settings.consumer_group,
                                                          "enable.auto.commit": False})
    reader = MergedReader(consumer, windows if windows is not None else source_windows(settings), {})
    outcomes = []
    try:
        while (rec := await reader.next()) is not None:
            outcomes.append(await assembled.pipeline.process(rec))
    finally:
        consumer.close()
        await assembled.batcher.stop()
        sink.close()
        await client.aclose()
    return outcomes


async def snapshot(redis_url: str, prefix: str) -> dict[bytes, bytes | None]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = sorted([k async for k in client.scan_iter(match=f"{prefix}:*")])
        return {k: await client.dump(k) for k in keys}
    finally:
        await client.aclose()


def at(i: int, base: float = time.time() - 3 * DAY_S) -> float:
    return base + 60.0 * i
