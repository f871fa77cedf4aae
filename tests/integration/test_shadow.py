"""Shadow scoring with a second model: one shadow record per scored event on the shadow topic, and
the disagreement metrics move by exactly what the two models' estimates imply."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from confluent_kafka import Consumer, TopicPartition

from model.engine import EncodedFrame, FrameEstimate, FrameResult, InferenceEngine
from stream import metrics
from stream.adapters.belief_store import BeliefStore
from stream.adapters.kafka_sink import KafkaSink
from stream.config import Settings
from stream.core.belief import ErrorFloor, event_evidence
from stream.core.policy import Action, Policy, PolicyEvent, decide, load_policy
from stream.pipeline.assemble import ensure_shadow_topic, shadow_topic
from stream.pipeline.ports import SourceRecord
from stream.pipeline.shadow import ShadowScorer
from stream.tools import events
from tests.integration.replay_support import at, face, tiny_checkpoint

pytestmark = pytest.mark.integration


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _lenient(policy: Policy) -> Policy:
    """A policy an untrained live model can ALLOW under (this tests the shadow's accounting, not the
    policy): one observation suffices, and profile_photo ALLOWs at P(age >= 14) >= 0.90, the bar of
    default-2025.2 (the tiny model says 45.7 +- 26 for every face)."""
    default = policy.jurisdictions["DEFAULT"]
    rule = dataclasses.replace(default.surfaces["profile_photo"], buffer_years=1.0, required_confidence=0.90)
    surfaces = {**default.surfaces, "profile_photo": rule}
    jurisdictions = {**policy.jurisdictions, "DEFAULT": dataclasses.replace(default, surfaces=surfaces)}
    return dataclasses.replace(policy, min_observations=1, jurisdictions=jurisdictions)


async def _run(
    settings: Settings,
    redis_url: str,
    live: InferenceEngine,
    shadow_score: object,
    shadow_version: str,
    n_events: int,
) -> tuple[list[Action], list[dict[str, Any]]]:
    policy = _lenient(load_policy(None))
    client = aioredis.Redis.from_url(redis_url)
    store = BeliefStore(client, prefix=f"sh{uuid.uuid4().hex[:8]}", half_life_s=365 * 86400.0, ttl_s=400 * 86400.0)
    sink = KafkaSink(settings)
    shadow = ShadowScorer(
        score=shadow_score,  # type: ignore[arg-type]
        model_version=shadow_version,
        policy=policy,
        sink=sink,
        topic=shadow_topic(settings),
        half_life_s=store.half_life_s,
        error_floor=ErrorFloor(live.error_floor_years, live.floor_ratio),
    )
    live_actions, bodies = [], []
    try:
        for i in range(n_events):
            t = at(i)
            frames = [EncodedFrame(face(30, seed=10 * i + k), "image/jpeg") for k in range(2)]
            record = events.upload(f"u{i}", at=t, surface="profile_photo", event_id=str(uuid.uuid4()))
            live_results: list[FrameResult] = live.score(frames)
            floor = ErrorFloor(live.error_floor_years, live.floor_ratio)
            ev = event_evidence(
                str(record["event_id"]),
                t,
                [(r.mean, r.std) for r in live_results if isinstance(r, FrameEstimate)],
                floor,
            )
            evidence = [ev] if ev is not None else []
            applied = await store.apply(
                {f"u{i}": evidence}, now=t, model_version=live.model_version, floor=floor.minimum
            )
            belief = applied.get(f"u{i}")
            event = PolicyEvent("DEFAULT", "profile_photo", t)
            decision = decide(belief, event, policy, now=t, half_life_s=store.half_life_s)
            live_actions.append(decision.action)
            shadow_results = await shadow.score_resolved(frames)
            body = await shadow.observe(
                SourceRecord("uploads", 0, i, None, None, 0),
                record=record,
                event=event,
                live=decision,
                live_results=live_results,
                shadow_results=shadow_results,
                belief_after=belief,
                live_floor=floor,
            )
            assert body is not None
            bodies.append(body)
    finally:
        sink.close()
        await client.aclose()
    return live_actions, bodies


def _published(settings: Settings) -> list[dict[str, Any]]:
    c = Consumer(settings.kafka_client_config() | {"group.id": "shadow-check"})
    topic = shadow_topic(settings)
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    total = 0
    assign = []
    for p in parts:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        total += high - low
        assign.append(TopicPartition(topic, p, low))
    c.assign(assign)
    got: list[dict[str, Any]] = []
    while len(got) < total:
        got += [json.loads(m.value() or b"") for m in c.consume(total, 5.0) if m.error() is None]
    c.close()
    return got


async def test_second_model_publishes_one_record_per_event_and_moves_diff_metric(
    kafka_settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    settings = dataclasses.replace(kafka_settings, redis_url=redis_url)
    ensure_shadow_topic(settings, partitions=3)
    live = InferenceEngine.from_checkpoint(tiny_checkpoint(tmp_path, seed=0), device="cpu", threads=1)
    second = InferenceEngine.from_checkpoint(tiny_checkpoint(tmp_path, seed=1), device="cpu", threads=1)

    async def score(frame: EncodedFrame) -> FrameResult:
        return second.score([frame])[0]

    count0 = _value("agegate_shadow_abs_diff_years_count")
    sum0 = _value("agegate_shadow_abs_diff_years_sum")
    _, bodies = await _run(settings, redis_url, live, score, second.model_version, n_events=3)
    expected = [
        abs(a[0] - b[0])
        for body in bodies
        for a, b in zip(body["live"]["estimates"], body["shadow"]["estimates"], strict=True)
    ]
    assert _value("agegate_shadow_abs_diff_years_count") - count0 == 6
    assert _value("agegate_shadow_abs_diff_years_sum") - sum0 == pytest.approx(sum(expected))
    assert sum(expected) > 0, "two differently seeded models must disagree"
    published = _published(settings)
    assert sorted(p["idempotency_key"] for p in published) == ["uploads/0/0", "uploads/0/1", "uploads/0/2"]
    assert all(p["shadow"]["model_version"] == "age_regressor@s1" for p in published)


async def test_a_shadow_that_sees_children_counts_action_changes(
    kafka_settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    settings = dataclasses.replace(kafka_settings, redis_url=redis_url)
    ensure_shadow_topic(settings, partitions=3)
    live = InferenceEngine.from_checkpoint(tiny_checkpoint(tmp_path, seed=0), device="cpu", threads=1)

    async def child(_frame: EncodedFrame) -> FrameResult:
        return FrameEstimate(mean=8.0, std=1.0)

    labels = {"from_action": "ALLOW", "to_action": "RESTRICT"}
    before = _value("agegate_shadow_action_changes_total", labels)
    live_actions, bodies = await _run(settings, redis_url, live, child, "child@1", n_events=3)
    allowed = sum(a is Action.ALLOW for a in live_actions)
    assert allowed > 0, "the live model must allow someone for the comparison to mean anything"
    assert _value("agegate_shadow_action_changes_total", labels) - before == allowed
    assert all(
        b["shadow"]["action"] == "RESTRICT" and b["action_changed"] == (b["live"]["action"] == "ALLOW") for b in bodies
    )
