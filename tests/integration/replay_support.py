"""Shared by the replay, redrive and shadow integration tests: a tiny model and a produced history
(bench/history.py, shared with the benchmarks), and `run_live`: the worker's pipeline driven by the
one driver from a confluent-kafka reader, its decisions acknowledged on the real decisions topic."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis
from confluent_kafka import Consumer

from bench.history import at, face, produce, source_windows, tiny_checkpoint
from model.engine import InferenceEngine
from stream.adapters.belief_store import BeliefStore
from stream.adapters.codec import AvroCodec
from stream.adapters.kafka_sink import KafkaSink
from stream.config import Settings
from stream.core.policy import Policy
from stream.pipeline.assemble import DAY_S, assemble
from stream.pipeline.ports import Outcome
from stream.runners.driver import run_to_end
from stream.runners.replay import MergedReader, PartitionWindow

__all__ = ["at", "face", "produce", "replay_command", "run_live", "snapshot", "source_windows", "tiny_checkpoint"]


def replay_command(
    settings: Settings, redis_url: str, ckpt: Path, out: Path, *args: str, **extra_env: str
) -> tuple[list[str], dict[str, str]]:
    """`agegate replay` of the whole window into `out` as a subprocess (a kill -9 is real), and its environment."""
    env = (
        os.environ
        | {
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "REDIS_URL": redis_url,
            "AGEGATE_TOPIC_PREFIX": settings.topic_prefix,
            "AGEGATE_REDIS_PREFIX": settings.redis_key_prefix,
            "AGEGATE_DEVICE": "cpu",
            "AGEGATE_INFERENCE_THREADS": "1",
            "AGEGATE_BATCH_MAX_FRAMES": "8",
            "AGEGATE_LOG_LEVEL": "WARNING",
        }
        | extra_env
    )
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "replay",
        "--from",
        "earliest",
        "--to",
        "latest",
        "--model",
        str(ckpt),
        "--out",
        f"file:{out}",
        "--no-progress",
        *args,
    ]
    return cmd, env


async def run_live(
    settings: Settings,
    engine: InferenceEngine,
    policy: Policy,
    *,
    codec: AvroCodec | None = None,
    windows: Sequence[PartitionWindow] | None = None,
) -> list[Outcome]:
    """Process the source topics' current content like the worker: production prefix, real sink."""
    client = aioredis.Redis.from_url(settings.redis_url)
    store = BeliefStore(
        client,
        prefix=settings.redis_key_prefix,
        half_life_s=settings.belief_half_life_days * DAY_S,
        ttl_s=settings.belief_ttl_days * DAY_S,
    )
    sink = KafkaSink(settings)
    assembled = assemble(
        settings, model=engine, store=store, sink=sink, policy=policy, codec=codec, stop_on_invalid_share=False
    )
    consumer = Consumer(
        settings.kafka_client_config() | {"group.id": settings.consumer_group, "enable.auto.commit": False}
    )
    reader = MergedReader(consumer, windows if windows is not None else source_windows(settings), {})
    assembled.start()
    try:
        return await run_to_end(
            reader.next,
            assembled.pipeline.process,
            max_in_flight=assembled.max_in_flight,
            max_in_flight_bytes=assembled.max_in_flight_bytes,
            batch_events=assembled.batch_events,
        )
    finally:
        consumer.close()
        await assembled.stop()
        sink.close()
        await client.aclose()


async def snapshot(redis_url: str, prefix: str) -> dict[bytes, bytes | None]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = sorted([k async for k in client.scan_iter(match=f"{prefix}:*")])
        return {k: await client.dump(k) for k in keys}
    finally:
        await client.aclose()
