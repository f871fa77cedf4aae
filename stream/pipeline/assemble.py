"""Assembling the pipeline from settings: model engine, micro-batcher, Redis store, policy, sink.

The only module of the pipeline that reads Settings or wires adapters in. Shared by the worker and
the tools that run the same pipeline (replay, demo, benchmarks), so they score, fuse and decide
exactly alike. `assemble` returns a complete object: callers start and stop it, and patch nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from model.decode import DecodeLimits
from model.engine import EncodedFrame, FrameResult, InferenceEngine
from model.errors import ModelError
from stream.adapters.belief_store import BeliefStore, RedisClient
from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import registry_from_settings
from stream.adapters.topics import topic_names
from stream.config import Settings
from stream.core.belief import ErrorFloor
from stream.core.policy import Policy, load_policy
from stream.errors import ModelUnavailable
from stream.pipeline.batching import BatchPolicy, MicroBatcher
from stream.pipeline.frames import FrameResolver, FrameStores
from stream.pipeline.pipeline import InvalidShareGuard, Pipeline
from stream.pipeline.ports import BeliefRepository, Codec, FrameModel, Sink, SourceRecord
from stream.pipeline.shadow import ShadowScorer

DAY_S = 86400.0


CHECKPOINT_IN_DIRECTORY = "best.safetensors"  # what `agegate train --out DIR` leaves as the model to serve


def checkpoint_file(path: str) -> Path:
    """AGEGATE_MODEL as its help says: a .safetensors file, or a training run's directory (its
    best.safetensors). FileNotFoundError when there is none yet, which the worker waits out."""
    given = Path(path)
    if given.is_dir():
        best = given / CHECKPOINT_IN_DIRECTORY
        if not best.is_file():
            raise FileNotFoundError(
                f"{given} is a directory without {CHECKPOINT_IN_DIRECTORY}: point AGEGATE_MODEL at a training run's "
                "output directory or at a .safetensors file"
            )
        return best
    if not given.exists():
        raise FileNotFoundError(f"no model checkpoint at {given}")
    return given


def inference_threads(settings: Settings) -> int:
    """AGEGATE_INFERENCE_THREADS, or by default every core this process may use.

    Leaving the event loop a core (cores - 1) was tried: on the 2-core bench machine, interleaved
    runs of bench/worker.py gave one thread no more frames/s than two (medians 1048 vs 1163), so the
    default stays all cores.
    """
    return settings.inference_threads or len(os.sched_getaffinity(0))


def load_engine(settings: Settings, checkpoint: str | None = None) -> InferenceEngine:
    """The inference engine for AGEGATE_MODEL (or `checkpoint`); ModelUnavailable when there is no usable one."""
    path = checkpoint or settings.model_checkpoint
    if not path:
        raise ModelUnavailable("no model checkpoint configured: set AGEGATE_MODEL")
    limits = DecodeLimits(max_bytes=settings.frame_max_bytes, max_pixels=settings.frame_max_pixels)
    try:
        return InferenceEngine.from_checkpoint(
            checkpoint_file(path),
            device=settings.inference_device,
            threads=inference_threads(settings),
            limits=limits,
            decode_processes=settings.decode_processes,
        )
    except (OSError, ModelError) as exc:  # FileNotFoundError is an OSError
        raise ModelUnavailable(str(exc)) from exc


async def load_engine_when_ready(
    settings: Settings,
    checkpoint: str | None = None,
    *,
    wait: Any = None,
    on_wait: Callable[[ModelUnavailable, int], None] | None = None,
) -> InferenceEngine:
    """`load_engine`, retried with backoff for as long as the checkpoint is missing or unusable.

    A model volume can fill after the pod starts, or a copy can still be running: waiting (not ready,
    nothing consumed) is right; crash-looping is not. `on_wait(error, attempt)` runs before each wait.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(ModelUnavailable),
        wait=wait or wait_exponential_jitter(multiplier=1, max=30),
        before_sleep=lambda s: (
            on_wait(s.outcome.exception(), s.attempt_number)  # type: ignore[arg-type,union-attr]
            if on_wait is not None
            else None
        ),
    ):
        with attempt:
            return await asyncio.to_thread(load_engine, settings, checkpoint)
    raise AssertionError("unreachable: AsyncRetrying retries until load_engine returns")


def make_store(settings: Settings, client: RedisClient, *, prefix: str | None = None) -> BeliefStore:
    return BeliefStore(
        client,
        prefix=prefix or settings.redis_key_prefix,
        half_life_s=settings.belief_half_life_days * DAY_S,
        ttl_s=settings.belief_ttl_days * DAY_S,
    )


def redis_client(settings: Settings) -> RedisClient:
    """A plain client, or with AGEGATE_REDIS_CLUSTER the cluster client (it discovers the nodes and
    routes every command by its key's slot; scripts are loaded on every primary)."""
    if settings.redis_cluster:
        return aioredis.RedisCluster.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    return aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)


SHADOW_TOPIC_SUFFIX = "shadow-decisions"


def shadow_topic(settings: Settings) -> str:
    """The shadow topic's name: beside the declared topics, under the same environment prefix."""
    return settings.topic_prefix + SHADOW_TOPIC_SUFFIX


def ensure_shadow_topic(settings: Settings, *, partitions: int = 12) -> None:
    """Create the shadow topic if missing (it is not one of the declared topics: it is optional)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    name = shadow_topic(settings)
    if name in admin.list_topics(timeout=30).topics:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=settings.topic_replication_factor,
                config={"retention.ms": str(7 * 86400 * 1000)},
            )
        ]
    )
    for fut in futures.values():
        try:
            fut.result(timeout=30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def consumer_batch(settings: Settings) -> tuple[int, float]:
    """How a driver should take input: at most this many events per batch, waiting at most this many
    seconds to fill one (the micro-batch's size and wait: a batch's frames fill a forward pass)."""
    return max(1, min(settings.queue_max_events, settings.batch_max_frames)), settings.batch_max_wait_ms / 1000


# Consumer batches faust may hold ahead of the driver (its stream buffer).
_BATCHES_BUFFERED = 8


def consumer_buffer_events(settings: Settings) -> int:
    """How many fetched events faust may hold before the driver takes them: enough that the next
    batch is ready whenever the driver has room, and few, because these records sit outside the
    driver's byte bound (`queue_max_bytes`)."""
    events, _ = consumer_batch(settings)
    return min(settings.queue_max_events, _BATCHES_BUFFERED * events)


def batch_policy(settings: Settings, *, max_frames: int | None = None) -> BatchPolicy:
    """When a forward pass starts: at `max_frames` frames, or once the model is free and the oldest
    pending frame waited `inference_max_wait_ms`. The default 0 scores what is pending as soon as
    the model is free: the frames come in consumer batches that already waited `batch_max_wait_ms`,
    so a second wait here would only add to every decision's latency (while a pass runs, the next
    batches' frames gather anyway, so a busy worker still scores full passes)."""
    return BatchPolicy(max_frames or settings.batch_max_frames, settings.inference_max_wait_ms / 1000)


def shadow_scorer(settings: Settings, *, policy: Policy, sink: Sink) -> ShadowScorer | None:
    """None when no shadow model is configured. Its own micro-batcher: the shadow scores the decided
    events' frames in batches of the same policy, off the event loop."""
    if not settings.shadow_model_checkpoint:
        return None
    engine = load_engine(settings, settings.shadow_model_checkpoint)
    batcher: MicroBatcher[EncodedFrame, FrameResult] = MicroBatcher(
        engine.score_decoded, batch_policy(settings), prepare=engine.decode
    )
    return ShadowScorer(
        score=batcher.score,
        model_version=engine.model_version,
        policy=policy,
        sink=sink,
        topic=shadow_topic(settings),
        half_life_s=settings.belief_half_life_days * DAY_S,
        error_floor=ErrorFloor(engine.error_floor_years, engine.floor_ratio),
        batcher=batcher,
        close_model=engine.close,
    )


@dataclass
class Assembled:
    """A complete pipeline: `start()` inside the running loop, `await stop()` at the end.

    `batch_events`, `batch_wait_s`, `max_in_flight` and `max_in_flight_bytes` are how its driver
    should feed it: at most that many events per batch, waiting that long to fill one, with at most
    that many events (and bytes of their records) in flight.
    """

    pipeline: Pipeline
    policy: Policy
    batch_events: int
    batch_wait_s: float
    max_in_flight: int
    max_in_flight_bytes: int
    _batcher: MicroBatcher[EncodedFrame, FrameResult]
    _resolver: FrameResolver
    _shadow: ShadowScorer | None = None

    def start(self) -> None:
        """Start the batchers; inside the running event loop."""
        self._batcher.start()
        if self._shadow is not None:
            self._shadow.start()

    async def stop(self) -> None:
        """Finish pending inference, then release resources."""
        await self._batcher.stop()
        if self._shadow is not None:
            await self._shadow.stop()
        await self._resolver.close()

    @property
    def has_shadow(self) -> bool:
        return self._shadow is not None


def assemble(
    settings: Settings,
    *,
    model: FrameModel,
    store: BeliefRepository,
    sink: Sink,
    policy: Policy | None = None,
    codec: Codec | None = None,
    batch_max_frames: int | None = None,
    max_in_flight: int | None = None,
    clock: Callable[[], float] = time.time,
    processed_at: Callable[[SourceRecord], float] | None = None,
    with_shadow: bool = False,
    stop_on_invalid_share: bool = True,
    retain_frames: bool = False,
) -> Assembled:
    """A ready pipeline; call `start()` inside the running loop before processing.

    `model`: the inference engine, or anything scoring frames alike (replay's fixed-shape scorer).
    `with_shadow`: score the configured shadow model too (the worker; never a replay, which must
    not publish anything but its own output). `stop_on_invalid_share=False`: the invalid-share
    guard never trips (a replay reports invalid input in its output instead). `retain_frames`: keep
    the scored frames of consenting users on the retained-frames topic (the worker only: a replay
    must never write them again, e.g. after an erasure).
    """
    policy = policy or load_policy(settings.policy_file or None)
    max_frames = batch_max_frames or settings.batch_max_frames
    batcher: MicroBatcher[EncodedFrame, FrameResult] = MicroBatcher(
        model.score_decoded, batch_policy(settings, max_frames=max_frames), prepare=model.decode
    )
    resolver = FrameResolver(
        FrameStores.parse(
            settings.frame_uri_roots, max_bytes=settings.frame_max_bytes, timeout_s=settings.frame_fetch_timeout_s
        ),
        max_frames=settings.max_frames_per_event,
    )
    shadow = shadow_scorer(settings, policy=policy, sink=sink) if with_shadow else None
    guard = (
        InvalidShareGuard(settings.invalid_share_limit, settings.invalid_share_window)
        if stop_on_invalid_share
        else InvalidShareGuard.never()
    )
    pipeline = Pipeline(
        codec=codec or AvroCodec(registry_from_settings(settings)),
        scorer=batcher,
        model_version=model.model_version,
        error_floor=ErrorFloor(model.error_floor_years, model.floor_ratio),
        store=store,
        policy=policy,
        sink=sink,
        resolver=resolver,
        topics=topic_names(settings),
        guard=guard,
        clock=clock,
        processed_at=processed_at,
        observer=shadow,
        retained_topic=topic_names(settings)["retained_frames"] if retain_frames else None,
    )
    in_flight = max_in_flight or settings.queue_max_events
    events, wait_s = consumer_batch(settings)
    return Assembled(
        pipeline,
        policy,
        batch_events=max(1, min(in_flight, events, max_frames)),
        batch_wait_s=wait_s,
        max_in_flight=in_flight,
        max_in_flight_bytes=settings.queue_max_bytes,
        _batcher=batcher,
        _resolver=resolver,
        _shadow=shadow,
    )
