"""`agegate erase`: a user's deletion request, honoured at once in Redis and by tombstones in Kafka.

    agegate erase --users-file IDS.txt     # one user id per line (ids stay out of shell history)
    agegate erase --user-id ID [--user-id ID ...]

1. The users' beliefs (and their event-id records) are deleted from Redis: no decision uses them
   from this moment.
2. Every retained frame of theirs gets a tombstone (the key with a null value) on the
   retained-frames topic. Readers (`agegate datasets from-feedback`) treat a tombstoned key as gone
   at once; the broker's compaction removes the frames' bytes from disk, and the tombstones
   themselves after the topic's delete.retention.ms.
The retained frames are keyed [user, event, frame] (stream/core/retention.py), so finding a user's
keys reads the topic once per run: erase users in batches. Only counts are printed or logged,
never user ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.config import Settings, load_settings
from stream.core.retention import key_user
from stream.log import get_logger

log = get_logger("agegate.erasure")
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class ErasureResult:
    users: int
    tombstones: int

    def to_dict(self) -> dict[str, int]:
        return {"users": self.users, "beliefs_deleted_for": self.users, "tombstones": self.tombstones}


async def delete_beliefs(settings: Settings, user_ids: Sequence[str]) -> None:
    import redis.asyncio as aioredis

    from stream.adapters.belief_store import BeliefStore

    client: Any = (aioredis.RedisCluster if settings.redis_cluster else aioredis.Redis).from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5
    )
    try:
        store = BeliefStore(
            client,
            prefix=settings.redis_key_prefix,
            half_life_s=settings.belief_half_life_days * DAY_S,
            ttl_s=settings.belief_ttl_days * DAY_S,
        )
        await store.delete(list(user_ids))
    finally:
        await client.aclose()


def live_frame_keys(settings: Settings, users: set[str], *, group: str) -> list[bytes]:
    """Keys of the users' retained frames whose latest value is not already a tombstone."""
    from stream.adapters.topic_reader import read_to_end
    from stream.adapters.topics import topic_name

    latest: dict[bytes, bool] = {}
    for m in read_to_end(settings, topic_name("retained_frames", settings), group=group):
        key = m.key()
        if key is not None and key_user(key) in users:
            latest[key] = m.value() is not None
    return [k for k, live in latest.items() if live]


def write_tombstones(settings: Settings, keys: Sequence[bytes]) -> int:
    """A null value per key, acknowledged by Kafka (acks=all, idempotent) before returning."""
    from confluent_kafka import Producer

    from stream.adapters.topics import topic_name
    from stream.errors import DependencyUnavailable

    if not keys:
        return 0
    topic = topic_name("retained_frames", settings)
    producer = Producer(settings.kafka_client_config() | {"enable.idempotence": True, "acks": "all"})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for key in keys:
        producer.produce(topic, key=key, value=None, on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(60)
    if left or failures:
        raise DependencyUnavailable(f"{left + len(failures)} tombstones were not acknowledged by Kafka; run again")
    return len(keys)


def erase(settings: Settings, user_ids: Sequence[str], *, group: str = "agegate-erase") -> ErasureResult:
    users = sorted({u for u in user_ids if u})
    if not users:
        return ErasureResult(0, 0)
    asyncio.run(delete_beliefs(settings, users))  # first: decisions stop using the data at once
    tombstones = write_tombstones(settings, live_frame_keys(settings, set(users), group=group))
    result = ErasureResult(len(users), tombstones)
    log.info("erasure done", users=result.users, tombstones=result.tombstones)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users-file", type=Path, default=None, help="file with one user id per line")
    parser.add_argument("--user-id", action="append", default=[], help="a user id to erase (repeatable)")


def run(args: argparse.Namespace) -> int:
    ids = list(args.user_id)
    if args.users_file is not None:
        ids += [line.strip() for line in args.users_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        print("agegate erase: give --users-file or --user-id", file=sys.stderr)
        return 2
    print(json.dumps(erase(load_settings(), ids).to_dict(), sort_keys=True))
    return 0
