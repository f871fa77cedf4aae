"""Reading a whole topic up to its end as of now: assigned (no group membership), nothing committed.

Used by the tools that inspect history (decision diff, dead-letter listing and redrive).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from stream.config import Settings
from stream.errors import AgegateError


class UnknownTopic(AgegateError):
    """The topic does not exist (or its metadata reports an error)."""


def read_to_end(settings: Settings, topic: str, *, group: str, timeout_s: float = 30.0) -> Iterator[Message]:
    """Every message from each partition's low watermark to its high watermark at the start."""
    conf: dict[str, Any] = settings.kafka_client_config() | {
        "group.id": group,
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    }
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise UnknownTopic(f"topic {topic} does not exist")
        ends: dict[int, int] = {}
        assign = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        if assign:
            consumer.assign(assign)
        while ends:
            msgs: list[Message] = consumer.consume(500, 1.0)
            for m in msgs:
                part, offset = m.partition(), m.offset()
                if m.error() is not None or part is None or offset is None or part not in ends:
                    continue
                if offset + 1 >= ends[part]:
                    del ends[part]
                yield m
            if not msgs:  # compacted or transactional tails: the position may pass the last message
                for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                    if tp.partition is not None and (tp.offset or 0) >= ends[tp.partition]:
                        del ends[tp.partition]
    finally:
        consumer.close()
