"""`agegate produce --synthetic N`: a load generator for the worker (confluent-kafka)."""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import registry_from_settings
from stream.adapters.topics import TopicAdmin, topic_name
from stream.config import Settings, load_settings
from stream.tools.loadgen import SyntheticEvent, synthetic_stream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--synthetic", type=int, required=True, metavar="N", help="number of events")
    parser.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    parser.add_argument("--bad-share", type=float, default=0.0, help="share of deliberately bad events")
    parser.add_argument("--seed", type=int, default=0, help="stream seed (same seed, same events)")
    parser.add_argument("--frames", type=int, default=2, help="frames per event")
    parser.add_argument("--truth", type=Path, help="write each user's true age here (JSON)")
    parser.add_argument("--no-create-topics", action="store_true", help="do not create missing topics first")


@dataclass(frozen=True, slots=True)
class Produced:
    event: SyntheticEvent
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def produce(
    settings: Settings,
    stream: list[SyntheticEvent] | None = None,
    *,
    n: int = 0,
    rate: float = 0.0,
    bad_share: float = 0.0,
    seed: int = 0,
    frames: int = 2,
) -> list[Produced]:
    """Produce a synthetic stream; returns where each event landed (all acknowledged).

    Paced (`rate` > 0), the load generator stands for a platform's long-running producers, so its
    own start is kept out of the events' timestamps: an idempotent producer holds its first records
    until it has a producer id (about 0.5 s here), so the first record is sent and awaited before
    the pacing clock starts (measured, those 0.5 s were most of the worker benchmark's whole-run
    p99), and it lingers librdkafka's default 5 ms instead of 20 (a backlog batches more)."""
    linger_ms = 5 if rate > 0 else 20
    producer = Producer(settings.kafka_client_config() | {"enable.idempotence": True, "linger.ms": linger_ms})
    sent = (
        list(stream)
        if stream is not None
        else list(
            synthetic_stream(
                n,
                seed=seed,
                bad_share=bad_share,
                frames_per_event=frames,
                codec=AvroCodec(registry_from_settings(settings)),
            )
        )
    )
    failures: list[str] = []
    landed: dict[int, Produced] = {}
    started = time.monotonic()

    def delivered(err: Any, msg: Any, i: int) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            landed[i] = Produced(sent[i], msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1])

    for i, ev in enumerate(sent):
        if rate > 0:
            lag = started + i / rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)  # pacing the load generator to the requested rate
        while True:
            try:
                producer.produce(
                    topic_name(ev.role, settings), ev.value, key=ev.key, on_delivery=functools.partial(delivered, i=i)
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if i == 0 and rate > 0:
            producer.flush(60)  # the producer is warm once its first record is acknowledged
            started = time.monotonic() - 1 / rate
    if producer.flush(60) != 0 or failures:
        raise RuntimeError(f"{len(failures)} events were not acknowledged: {failures[:3]}")
    return [landed[i] for i in range(len(sent))]


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    # Kafka unreachable: DependencyUnavailable now (one line, exit code 3), not a minute of retries.
    if not args.no_create_topics:
        TopicAdmin(settings).create()
    else:
        from stream.adapters.kafka_wait import probe

        probe(settings)
    t0 = time.monotonic()
    sent = produce(
        settings, n=args.synthetic, rate=args.rate, bad_share=args.bad_share, seed=args.seed, frames=args.frames
    )
    elapsed = time.monotonic() - t0
    if args.truth:
        args.truth.write_text(json.dumps({p.event.user_id: p.event.true_age for p in sent}))
    bad = sum(1 for p in sent if p.event.bad)
    print(f"produced {len(sent)} events ({bad} bad) in {elapsed:.1f}s ({len(sent) / max(elapsed, 1e-9):.0f}/s)")
    return 0
