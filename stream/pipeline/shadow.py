"""Shadow scoring: a candidate model scores the live frames; what it would have decided is published
to a shadow topic and measured against the live decision, never acted on and never stored.

The shadow never writes Redis. Its belief is the live belief with this event's live evidence
swapped for the shadow's (`swap_evidence`): fusion is a precision-weighted sum, so removing the
live terms and adding the shadow ones gives exactly what fusing the shadow's estimates into the
belief before the event would have given, without a second belief store or an extra round trip.

Shadow record (JSON, key = user id, header content-type: application/json), one per event with at
least one frame:
  {"idempotency_key", "user_id", "event_id", "event_time" (epoch s), "jurisdiction", "surface",
   "live":   {"model_version", "action", "estimates": [[mean, std] | null per frame]},
   "shadow": {"model_version", "action", "reason_codes", "age_mean", "age_std",
              "estimates": [[mean, std] | null per frame]},
   "action_changed": bool, "mean_abs_diff_years": float | null}

Wiring in the pipeline (stream/pipeline/pipeline.py), when `settings.shadow_model_checkpoint` is set:
  shadow = ShadowScorer.from_settings(settings, policy=policy, sink=sink)  # then shadow.start()
  - in `_score_frames`, with `resolved` the resolver's output, alongside the live scoring:
        shadow_results = await shadow.score_resolved(resolved)
  - in `_decide`, right after `decision = decide(...)`:
        await shadow.observe(rec, record=record, event=<the PolicyEvent passed to decide>,
                             live=decision, live_results=results, shadow_results=shadow_results,
                             belief_after=belief, live_floor=<the live model's floor>,
                             dependency_down=dependency_down, live_applied=not refused)
  - on shutdown: await shadow.stop().
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from model.engine import EncodedFrame, FrameError, FrameEstimate, FrameResult
from stream import metrics
from stream.pipeline.batching import BatchPolicy, MicroBatcher
from stream.belief import Belief, decay_factor, event_evidence, evidence_point
from stream.config import Settings
from stream.log import get_logger
from stream.pipeline.pipeline import Sink, SourceRecord
from stream.policy import Decision, Policy, PolicyEvent, decide

log = get_logger("agegate.shadow")

SHADOW_TOPIC_SUFFIX = "shadow-decisions"


def shadow_topic(settings: Settings) -> str:
    """The shadow topic's name: beside the declared topics, under the same environment prefix."""
    return settings.topic_prefix + SHADOW_TOPIC_SUFFIX


def swap_evidence(
    after: Belief | None,
    at: float,
    live: Sequence[FrameResult],
    shadow: Sequence[FrameResult],
    *,
    half_life_s: float,
    model_version: str,
    live_floor: float,
    shadow_floor: float,
) -> Belief | None:
    """The belief had this event (judged at `at`) been scored by the shadow model.

    Each model's frames form one observation (`event_evidence`, with that model's error floor), as
    the pipeline fused them; the live one is subtracted and the shadow's added.
    """
    if after is None or after.verified:
        return after  # no evidence was fused (or it was ignored: a verified age is authoritative)
    live_ev = event_evidence("live", at, [(e.mean, e.std) for e in live if isinstance(e, FrameEstimate)], live_floor)
    shadow_ev = event_evidence(
        "shadow", at, [(e.mean, e.std) for e in shadow if isinstance(e, FrameEstimate)], shadow_floor
    )
    d = decay_factor(after.updated_at - min(at, after.updated_at), half_life_s)
    anchor = after.birth_time
    precision = after.precision
    weighted = 0.0
    for sign, ev in ((-1.0, live_ev), (1.0, shadow_ev)):
        if ev is None:
            continue
        b, p = evidence_point(ev)
        precision += sign * p * d
        weighted += sign * p * d * (b - anchor)
    observations = after.observations - (live_ev is not None) + (shadow_ev is not None)
    if observations <= 0 or precision <= after.precision * 1e-12:
        return None
    return replace(after, birth_time=anchor + weighted / precision, precision=precision,
                   observations=observations, model_version=model_version,
                   floor=max(after.floor, shadow_floor))


def _pairs(results: Sequence[FrameResult]) -> list[list[float] | None]:
    return [[r.mean, r.std] if isinstance(r, FrameEstimate) else None for r in results]


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class ShadowScorer:
    def __init__(
        self, *, score: Callable[[EncodedFrame], Awaitable[FrameResult]], model_version: str, policy: Policy,
        sink: Sink, topic: str, half_life_s: float, error_floor: float,
        batcher: MicroBatcher[EncodedFrame, FrameResult] | None = None,
    ) -> None:
        self._score = score
        self.model_version = model_version
        self.error_floor = error_floor
        self.policy = policy
        self.sink = sink
        self.topic = topic
        self.half_life_s = half_life_s
        self._batcher = batcher

    @classmethod
    def from_settings(cls, settings: Settings, *, policy: Policy, sink: Sink) -> ShadowScorer | None:
        """None when no shadow model is configured. Its own micro-batcher: the shadow scores the
        same frames as they arrive, in batches of the same policy, off the event loop."""
        if not settings.shadow_model_checkpoint:
            return None
        from stream.pipeline.assemble import DAY_S, load_engine

        engine = load_engine(settings, settings.shadow_model_checkpoint)
        batcher: MicroBatcher[EncodedFrame, FrameResult] = MicroBatcher(
            engine.score, BatchPolicy(settings.batch_max_frames, settings.batch_max_wait_ms / 1000)
        )
        return cls(score=batcher.score, model_version=engine.model_version, policy=policy, sink=sink,
                   topic=shadow_topic(settings), half_life_s=settings.belief_half_life_days * DAY_S,
                   error_floor=engine.uncertainty.floor_years, batcher=batcher)

    def start(self) -> None:
        if self._batcher is not None:
            self._batcher.start()

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.stop()

    async def score_resolved(self, resolved: Sequence[EncodedFrame | FrameError]) -> list[FrameResult]:
        """The shadow's results for the frames the live model is scoring (errors pass through)."""

        async def one(item: EncodedFrame | FrameError) -> FrameResult:
            return item if isinstance(item, FrameError) else await self._score(item)

        return list(await asyncio.gather(*(one(item) for item in resolved)))

    async def observe(
        self, rec: SourceRecord, *, record: dict[str, Any], event: PolicyEvent, live: Decision,
        live_results: Sequence[FrameResult], shadow_results: Sequence[FrameResult], belief_after: Belief | None,
        live_floor: float, dependency_down: bool = False, live_applied: bool = True,
    ) -> dict[str, Any] | None:
        """Publish the shadow record for one event and update the disagreement metrics.

        Never raises (but for cancellation): a shadow problem must not hold up live decisions.
        """
        if not live_results:
            return None
        try:
            return await self._observe(rec, record, event, live, live_results, shadow_results, belief_after,
                                       live_floor, dependency_down, live_applied)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("shadow scoring failed; live decision unaffected", error=f"{type(exc).__name__}: {exc}")
            return None

    async def _observe(
        self, rec: SourceRecord, record: dict[str, Any], event: PolicyEvent, live: Decision,
        live_results: Sequence[FrameResult], shadow_results: Sequence[FrameResult], belief_after: Belief | None,
        live_floor: float, dependency_down: bool, live_applied: bool,
    ) -> dict[str, Any]:
        belief = (
            swap_evidence(belief_after, event.event_time, live_results, shadow_results,
                          half_life_s=self.half_life_s, model_version=self.model_version,
                          live_floor=live_floor, shadow_floor=self.error_floor)
            if live_applied else belief_after
        )
        shadow = decide(belief, event, self.policy, dependency_down=dependency_down, now=event.event_time,
                        half_life_s=self.half_life_s)
        diffs = [abs(a.mean - b.mean) for a, b in zip(live_results, shadow_results, strict=True)
                 if isinstance(a, FrameEstimate) and isinstance(b, FrameEstimate)]
        for d in diffs:
            metrics.SHADOW_ABS_DIFF_YEARS.observe(d)
        changed = shadow.action != live.action
        if changed:
            metrics.SHADOW_ACTION_CHANGES.labels(live.action.value, shadow.action.value).inc()
        body = {
            "idempotency_key": rec.idempotency_key,
            "user_id": str(record["user_id"]),
            "event_id": str(record["event_id"]),
            "event_time": event.event_time,
            "jurisdiction": live.jurisdiction,
            "surface": live.surface,
            "live": {"model_version": belief_after.model_version if belief_after else None,
                     "action": live.action.value, "estimates": _pairs(live_results)},
            "shadow": {"model_version": self.model_version, "action": shadow.action.value,
                       "reason_codes": list(shadow.reason_codes), "age_mean": _finite(shadow.evidence.age_mean),
                       "age_std": _finite(shadow.evidence.age_std), "estimates": _pairs(shadow_results)},
            "action_changed": changed,
            "mean_abs_diff_years": sum(diffs) / len(diffs) if diffs else None,
        }
        await self.sink.send(self.topic, str(record["user_id"]).encode(),
                             json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                             [("content-type", b"application/json")])
        return body


def ensure_shadow_topic(settings: Settings, *, partitions: int = 12) -> None:
    """Create the shadow topic if missing (it is not one of the declared topics: it is optional)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    name = shadow_topic(settings)
    if name in admin.list_topics(timeout=30).topics:
        return
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=settings.topic_replication_factor,
                                            config={"retention.ms": str(7 * 86400 * 1000)})])
    for fut in futures.values():
        try:
            fut.result(timeout=30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
