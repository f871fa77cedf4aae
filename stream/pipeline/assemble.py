"""Assembling the pipeline from settings: model engine, micro-batcher, Redis store, policy, sink.

Shared by the worker and the tools that run the same pipeline (replay, demo, benchmarks), so they
score, fuse and decide exactly alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from model.decode import DecodeLimits
from model.engine import EncodedFrame, FrameResult, InferenceEngine
from stream.pipeline.batching import BatchPolicy, MicroBatcher
from stream.belief_store import BeliefStore, RedisClient
from stream.codec import AvroCodec
from stream.config import Settings
from stream.pipeline.frames import FrameResolver, FrameStores
from stream.pipeline.pipeline import InvalidShareGuard, Pipeline, Sink, SourceRecord
from stream.policy import Policy, load_policy
from stream.registry import registry_from_url
from stream.pipeline.shadow import ShadowScorer
from stream.topics import topic_names

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


def load_engine(settings: Settings, checkpoint: str | None = None) -> InferenceEngine:
    path = checkpoint or settings.model_checkpoint
    if not path:
        raise FileNotFoundError("no model checkpoint configured: set AGEGATE_MODEL")
    limits = DecodeLimits(max_bytes=settings.frame_max_bytes, max_pixels=settings.frame_max_pixels)
    return InferenceEngine.from_checkpoint(
        checkpoint_file(path), device=settings.inference_device, threads=settings.inference_threads, limits=limits
    )


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


@dataclass
class Assembled:
    pipeline: Pipeline
    batcher: MicroBatcher[EncodedFrame, FrameResult]
    resolver: FrameResolver
    policy: Policy
    shadow: ShadowScorer | None = None

    def start(self) -> None:
        """Start the batchers; inside the running event loop."""
        self.batcher.start()
        if self.shadow is not None:
            self.shadow.start()

    async def stop(self) -> None:
        """Finish pending inference, then release resources."""
        await self.batcher.stop()
        if self.shadow is not None:
            await self.shadow.stop()
        await self.resolver.close()


def assemble(
    settings: Settings,
    *,
    engine: InferenceEngine,
    store: BeliefStore,
    sink: Sink,
    policy: Policy | None = None,
    batch_max_frames: int | None = None,
    clock: Callable[[], float] = time.time,
    processed_at: Callable[[SourceRecord], float] | None = None,
    with_shadow: bool = False,
) -> Assembled:
    """A ready pipeline; call `start()` inside the running loop before processing.

    `with_shadow`: score the configured shadow model too (the worker; never a replay, which must
    not publish anything but its own output).
    """
    policy = policy or load_policy(settings.policy_file or None)
    batcher: MicroBatcher[EncodedFrame, FrameResult] = MicroBatcher(
        engine.score, BatchPolicy(batch_max_frames or settings.batch_max_frames, settings.batch_max_wait_ms / 1000)
    )
    resolver = FrameResolver(
        FrameStores.parse(
            settings.frame_uri_roots, max_bytes=settings.frame_max_bytes, timeout_s=settings.frame_fetch_timeout_s
        ),
        max_frames=settings.max_frames_per_event,
    )
    shadow = ShadowScorer.from_settings(settings, policy=policy, sink=sink) if with_shadow else None
    pipeline = Pipeline(
        codec=AvroCodec(registry_from_url(settings.schema_registry_url)),
        score=batcher.score,
        model_version=engine.model_version,
        error_floor=engine.uncertainty.floor_years,
        store=store,
        policy=policy,
        sink=sink,
        resolver=resolver,
        topics=topic_names(settings),
        guard=InvalidShareGuard(settings.invalid_share_limit, settings.invalid_share_window),
        clock=clock,
        processed_at=processed_at,
        shadow=shadow,
    )
    return Assembled(pipeline, batcher, resolver, policy, shadow)
