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

Wiring: `assemble` builds the scorer when a shadow model is configured and hands it to the
pipeline as its decision observer. The shadow knows nothing of the pipeline's steps: it receives
each batch's decided events (`observe_decided`, stream/pipeline/decide.py `DecidedEvent`: the
event, its resolved frames, the live results, decision and belief), scores their frames in its own
micro-batches, and publishes; the pipeline awaits it with the batch's sends.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from model.engine import EncodedFrame, FrameError, FrameEstimate, FrameResult
from stream import metrics
from stream.core.belief import Belief, ErrorFloor, decay_factor, event_evidence, evidence_point
from stream.core.policy import Decision, Policy, PolicyEvent, decide
from stream.log import get_logger
from stream.pipeline.batching import MicroBatcher
from stream.pipeline.decide import DecidedEvent
from stream.pipeline.ports import Sink, SourceRecord

log = get_logger("agegate.shadow")


def swap_evidence(
    after: Belief | None,
    at: float,
    live: Sequence[FrameResult],
    shadow: Sequence[FrameResult],
    *,
    half_life_s: float,
    model_version: str,
    live_floor: ErrorFloor,
    shadow_floor: ErrorFloor,
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
    return replace(
        after,
        birth_time=anchor + weighted / precision,
        precision=precision,
        observations=observations,
        model_version=model_version,
        floor=max(after.floor, shadow_ev.floor if shadow_ev is not None else 0.0, shadow_floor.minimum),
    )


def _pairs(results: Sequence[FrameResult]) -> list[list[float] | None]:
    return [[r.mean, r.std] if isinstance(r, FrameEstimate) else None for r in results]


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class ShadowScorer:
    def __init__(
        self,
        *,
        score: Callable[[EncodedFrame], Awaitable[FrameResult]],
        model_version: str,
        policy: Policy,
        sink: Sink,
        topic: str,
        half_life_s: float,
        error_floor: ErrorFloor,
        batcher: MicroBatcher[EncodedFrame, FrameResult] | None = None,
        close_model: Callable[[], None] | None = None,
    ) -> None:
        """`close_model`: run at `stop`, after the last batch (the shadow engine's own resources)."""
        self._score = score
        self.model_version = model_version
        self.error_floor = error_floor
        self.policy = policy
        self.sink = sink
        self.topic = topic
        self.half_life_s = half_life_s
        self._batcher = batcher
        self._close_model = close_model

    def start(self) -> None:
        if self._batcher is not None:
            self._batcher.start()

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.stop()
        if self._close_model is not None:
            self._close_model()

    async def score_resolved(self, resolved: Sequence[EncodedFrame | FrameError]) -> list[FrameResult]:
        """The shadow's results for the frames the live model scored (errors pass through)."""
        frames = [f for f in resolved if isinstance(f, EncodedFrame)]
        if self._batcher is not None:
            scored = iter(await self._batcher.score_many(frames))
        else:
            scored = iter(await asyncio.gather(*(self._score(f) for f in frames)))
        return [f if isinstance(f, FrameError) else next(scored) for f in resolved]

    async def observe_decided(self, decided: Sequence[DecidedEvent]) -> None:
        """Score a batch's decided events with the shadow model and publish one record per event with frames.

        Never raises (but for cancellation): a shadow problem must not hold up live decisions.
        """
        with_frames = [d for d in decided if d.prepared.results]
        if not with_frames:
            return
        try:
            shadow = await self.score_resolved([f for d in with_frames for f in d.prepared.resolved])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("shadow scoring failed; live decision unaffected", error=f"{type(exc).__name__}: {exc}")
            return
        start = 0
        for d in with_frames:
            n = len(d.prepared.resolved)
            await self.observe(
                d.event.source,
                record={"user_id": d.event.user_id, "event_id": d.event.event_id},
                event=d.policy_event,
                live=d.decision,
                live_results=d.prepared.results,
                shadow_results=shadow[start : start + n],
                belief_after=d.belief_after,
                live_floor=d.live_floor,
                dependency_down=d.prepared.dependency_down,
                live_applied=d.live_applied,
            )
            start += n

    async def observe(
        self,
        rec: SourceRecord,
        *,
        record: Mapping[str, Any],
        event: PolicyEvent,
        live: Decision,
        live_results: Sequence[FrameResult],
        shadow_results: Sequence[FrameResult],
        belief_after: Belief | None,
        live_floor: ErrorFloor,
        dependency_down: bool = False,
        live_applied: bool = True,
    ) -> dict[str, Any] | None:
        """Publish the shadow record for one event and update the disagreement metrics.

        Never raises (but for cancellation): a shadow problem must not hold up live decisions.
        """
        if not live_results:
            return None
        try:
            return await self._observe(
                rec,
                record,
                event,
                live,
                live_results,
                shadow_results,
                belief_after,
                live_floor,
                dependency_down,
                live_applied,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("shadow scoring failed; live decision unaffected", error=f"{type(exc).__name__}: {exc}")
            return None

    async def _observe(
        self,
        rec: SourceRecord,
        record: Mapping[str, Any],
        event: PolicyEvent,
        live: Decision,
        live_results: Sequence[FrameResult],
        shadow_results: Sequence[FrameResult],
        belief_after: Belief | None,
        live_floor: ErrorFloor,
        dependency_down: bool,
        live_applied: bool,
    ) -> dict[str, Any]:
        belief = (
            swap_evidence(
                belief_after,
                event.event_time,
                live_results,
                shadow_results,
                half_life_s=self.half_life_s,
                model_version=self.model_version,
                live_floor=live_floor,
                shadow_floor=self.error_floor,
            )
            if live_applied
            else belief_after
        )
        shadow = decide(
            belief,
            event,
            self.policy,
            dependency_down=dependency_down,
            now=event.event_time,
            half_life_s=self.half_life_s,
        )
        diffs = [
            abs(a.mean - b.mean)
            for a, b in zip(live_results, shadow_results, strict=True)
            if isinstance(a, FrameEstimate) and isinstance(b, FrameEstimate)
        ]
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
            "live": {
                "model_version": belief_after.model_version if belief_after else None,
                "action": live.action.value,
                "estimates": _pairs(live_results),
            },
            "shadow": {
                "model_version": self.model_version,
                "action": shadow.action.value,
                "reason_codes": list(shadow.reason_codes),
                "age_mean": _finite(shadow.evidence.age_mean),
                "age_std": _finite(shadow.evidence.age_std),
                "estimates": _pairs(shadow_results),
            },
            "action_changed": changed,
            "mean_abs_diff_years": sum(diffs) / len(diffs) if diffs else None,
        }
        await self.sink.send(
            self.topic,
            str(record["user_id"]).encode(),
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
            [("content-type", b"application/json")],
        )
        return body
