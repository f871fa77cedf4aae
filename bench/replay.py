"""Replay throughput next to the worker pipeline's, in the same run, on this machine.

    .venv/bin/python bench/replay.py [--events 400] [--frames 1]

"worker" is the worker's pipeline (stream/pipeline/assemble.py: micro-batcher, Redis store, KafkaSink
to the decisions topic) driven by the one driver (stream/runners/driver.py) from a confluent-kafka
reader, with the worker's batch size and in-flight window; the faust runtime itself is not included.
"replay" is `stream.runners.replay.replay` over the same window (merged order, fixed-shape batches,
undo journal, checkpoints every 1000 events, output to a file).
Needs the local Kafka and Redis (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL). Writes bench/results/replay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.history, run as a script

import redis.asyncio as aioredis
from confluent_kafka import Consumer

from bench.history import at, face, produce, source_windows, tiny_checkpoint
from model.engine import InferenceEngine
from stream.adapters.belief_store import BeliefStore
from stream.adapters.kafka_sink import KafkaSink
from stream.adapters.topics import TopicAdmin
from stream.config import Settings, load_settings
from stream.core.policy import load_policy
from stream.pipeline.assemble import DAY_S, assemble
from stream.runners.driver import run_to_end
from stream.runners.replay import MergedReader, ReplayConfig, parse_bound, replay
from stream.tools import events


async def worker_like(settings: Settings, engine: InferenceEngine) -> float:
    client = aioredis.Redis.from_url(settings.redis_url)
    store = BeliefStore(client, prefix=settings.redis_key_prefix, half_life_s=365 * DAY_S, ttl_s=400 * DAY_S)
    sink = KafkaSink(settings)
    a = assemble(settings, model=engine, store=store, sink=sink, policy=load_policy(None), stop_on_invalid_share=False)
    consumer = Consumer(settings.kafka_client_config() | {"group.id": settings.consumer_group})
    reader = MergedReader(consumer, source_windows(settings), {})
    a.start()
    started = time.perf_counter()
    try:
        outcomes = await run_to_end(
            reader.next,
            a.pipeline.process,
            max_in_flight=a.max_in_flight,
            max_in_flight_bytes=a.max_in_flight_bytes,
            batch_events=a.batch_events,
        )
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
        await a.stop()
        sink.close()
        await client.aclose()
    return len(outcomes) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=400)
    ap.add_argument("--frames", type=int, default=1)
    args = ap.parse_args()
    uid = uuid.uuid4().hex[:8]
    settings = load_settings(
        topic_prefix=f"bench{uid}.",
        consumer_group=f"bench{uid}",
        redis_key_prefix=f"bench{uid}",
        inference_device="cpu",
        inference_threads=1,
    )
    TopicAdmin(settings).create()
    tmp = Path(tempfile.mkdtemp())
    ckpt = tiny_checkpoint(tmp)
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu", threads=1)
    jpegs = [face(20 + i % 40, seed=i) for i in range(32)]

    def frames(i: int) -> list[dict[str, object]]:
        return [events.inline_frame(f"f{k}", jpegs[(i + k) % 32]) for k in range(args.frames)]

    evs = [
        (
            "uploads",
            events.upload(
                f"u{i % 97}", at=at(i), surface="profile_photo", event_id=str(uuid.uuid4()), frames=frames(i)
            ),
        )
        for i in range(args.events)
    ]
    produce(settings, evs)
    worker_rate = asyncio.run(worker_like(settings, engine))
    out = tmp / "replay.jsonl"
    cfg = ReplayConfig(
        settings=settings,
        frm=parse_bound("earliest"),
        to=parse_bound("latest"),
        out=f"file:{out}",
        state_path=tmp / "state.json",
        model=str(ckpt),
        progress=False,
        max_in_flight=settings.queue_max_events,
    )
    summary = asyncio.run(replay(cfg, engine=engine))
    rows = {
        "events": args.events,
        "frames_per_event": args.frames,
        "device": "cpu",
        "threads": 1,
        "worker_pipeline_events_per_s": round(worker_rate, 1),
        "replay_events_per_s": round(summary.rate, 1),
    }
    print(f"{'runner':10} {'events/s':>10}\n{'worker':10} {worker_rate:10.1f}\n{'replay':10} {summary.rate:10.1f}")
    print(f"({args.events} events x {args.frames} frame(s), tiny model, CPU, 1 inference thread)")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "replay.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
