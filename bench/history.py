"""A produced history for benchmarks and integration tests: a tiny model, synthetic faces, events
produced with their event time as Kafka timestamp, and the windows of what the source topics hold.

Lives here, not in tests/, because bench/ must never import from tests/ (tests import it instead).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from confluent_kafka import Consumer, Producer, TopicPartition

from model.checkpoint import save_checkpoint
from model.data.synthetic import encode_jpeg, render_face, sample_attributes
from model.models import create_model
from stream.adapters.codec import AvroCodec
from stream.adapters.topics import topic_names
from stream.config import Settings
from stream.core.subjects import FEEDBACK, SIGNUP, UPLOAD
from stream.pipeline.assemble import DAY_S
from stream.runners.replay import PartitionWindow

SUBJECT = {"signups": SIGNUP, "uploads": UPLOAD, "feedback": FEEDBACK}


def tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("age_regressor", width=8, version=f"s{seed}")
    return save_checkpoint(out_dir / f"tiny-{seed}.safetensors", model)


def face(age: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(render_face(age, sample_attributes(rng), rng), rng)


def produce(
    settings: Settings, events: Sequence[tuple[str, dict[str, Any]]], *, raw: dict[int, bytes] | None = None
) -> None:
    """Produce (role, record) pairs keyed by user id, Kafka timestamp = event time; `raw` replaces the
    bytes of the i-th event (e.g. a broken schema id)."""
    codec = AvroCodec()
    names = topic_names(settings)
    producer = Producer(settings.kafka_client_config() | {"enable.idempotence": True, "acks": "all"})
    for i, (role, record) in enumerate(events):
        value = (raw or {}).get(i) or codec.encode(SUBJECT[role], record)
        producer.produce(
            names[role],
            key=record["user_id"].encode(),
            value=value,
            timestamp=int(record["occurred_at"].timestamp() * 1000),
        )
    assert producer.flush(30) == 0


def source_windows(settings: Settings) -> list[PartitionWindow]:
    """Every source partition from its low to its high watermark, now."""
    names = topic_names(settings)
    c = Consumer(settings.kafka_client_config() | {"group.id": "test-windows"})
    try:
        out = []
        for role in ("signups", "uploads", "feedback"):
            meta = c.list_topics(names[role], timeout=10).topics[names[role]]
            for p in sorted(meta.partitions):
                low, high = c.get_watermark_offsets(TopicPartition(names[role], p), timeout=10, cached=False)
                out.append(PartitionWindow(names[role], p, low, high))
        return out
    finally:
        c.close()


def at(i: int, base: float = time.time() - 3 * DAY_S) -> float:
    return base + 60.0 * i
