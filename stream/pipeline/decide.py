"""Step 5, decide: an event's evidence, its fused belief and the policy give its decision and record.

Pure logic (no I/O): `prepare` turns an event and its frame results into a belief request (or the
reason the event is invalid), `decide_event` judges it once the belief is fused, and
`decision_record` is what the decisions topic receives.

Time rule (one for every event type): the producer's clock never makes anyone older. Every age
claim of the event (frame estimates, a verified age, a declared age or birth date) is taken as of
processing time, and the decision is judged at processing time; `occurred_at` is recorded for audit
only. So an event dated in the future or far in the past decides exactly as the same event dated
now, and a forged or delayed timestamp can never buy an ALLOW.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model.engine import EncodedFrame, FrameError, FrameEstimate, FrameResult
from stream import metrics
from stream.core.belief import YEAR_S, Belief, ClockSkewRule, ErrorFloor, event_evidence
from stream.core.belief_updates import SurfaceKey
from stream.core.policy import Decision, Policy, PolicyEvent, decide
from stream.errors import InvalidEvent
from stream.pipeline.decode import Event
from stream.pipeline.frames import FRAMES_OVER_LIMIT, TRANSIENT_REASONS
from stream.pipeline.fuse import BeliefRequest, Fused


@dataclass(frozen=True, slots=True)
class Prepared:
    """An event ready for the belief step: its frame results and what it claims, as of `judged_at`."""

    event: Event
    resolved: Sequence[EncodedFrame | FrameError]
    results: Sequence[FrameResult]
    judged_at: float
    jurisdiction: str
    declared_age: float | None
    dependency_down: bool
    request: BeliefRequest

    @property
    def estimates(self) -> list[FrameEstimate]:
        return [r for r in self.results if isinstance(r, FrameEstimate)]

    @property
    def errors(self) -> list[FrameError]:
        return [r for r in self.results if isinstance(r, FrameError)]


@dataclass(frozen=True, slots=True)
class DecidedEvent:
    """What the pipeline decided for one event, with everything an observer (the shadow) needs."""

    prepared: Prepared
    policy_event: PolicyEvent
    decision: Decision
    belief_after: Belief | None
    live_floor: ErrorFloor
    live_applied: bool  # False when the store refused its evidence (clock skew)
    record: dict[str, Any]  # the decision record, as published

    @property
    def event(self) -> Event:
        return self.prepared.event


def prepare(
    event: Event,
    resolved: Sequence[EncodedFrame | FrameError],
    results: Sequence[FrameResult],
    *,
    judged_at: float,
    policy: Policy,
    error_floor: ErrorFloor,
) -> Prepared:
    """Raises InvalidEvent (dead-letter it) when every frame failed for a reason that is the event's."""
    estimates = [r for r in results if isinstance(r, FrameEstimate)]
    errors = [r for r in results if isinstance(r, FrameError)]
    for err in errors:
        metrics.FRAME_ERRORS.labels(err.reason).inc()
    dependency_down = False
    if results and not estimates:
        if all(e.reason in TRANSIENT_REASONS for e in errors):
            dependency_down = True  # the frame store is down: decide safely, never ALLOW
        else:
            reasons = sorted({e.reason for e in errors})
            raise InvalidEvent(f"all {len(errors)} frames failed: {', '.join(reasons)}", reason="all_frames_failed")
    if estimates:
        metrics.PREDICTED_AGE_MEAN.set(sum(e.mean for e in estimates) / len(estimates))
    jurisdiction = event.jurisdiction
    verified: tuple[str, float, float] | None = None
    if event.verified_age is not None:
        jurisdiction = jurisdiction or policy.default_jurisdiction
        verified = (event.event_id, event.verified_age, judged_at)
    # An event's frames share pose, light and camera: together they are one observation.
    evidence = event_evidence(event.event_id, judged_at, [(e.mean, e.std) for e in estimates], error_floor)
    request = BeliefRequest(
        event.user_id,
        [evidence] if evidence is not None else [],
        SurfaceKey(event.user_id, jurisdiction, event.surface, policy.version),
        verified,
    )
    return Prepared(
        event, resolved, results, judged_at, jurisdiction, declared_age(event, judged_at), dependency_down, request
    )


def decide_event(
    prepared: Prepared,
    fused: Fused,
    *,
    policy: Policy,
    half_life_s: float,
    skew: ClockSkewRule,
    model_version: str,
    error_floor: ErrorFloor,
) -> DecidedEvent:
    event = prepared.event
    policy_event = PolicyEvent(
        prepared.jurisdiction,
        event.surface,
        prepared.judged_at,
        declared_age=prepared.declared_age,
        previous_action=fused.previous,
    )
    decision = decide(
        fused.belief,
        policy_event,
        policy,
        dependency_down=prepared.dependency_down,
        now=prepared.judged_at,
        half_life_s=half_life_s,
    )
    estimates, errors = prepared.estimates, prepared.errors
    reasons = list(decision.reason_codes)
    if errors and estimates:
        reasons.append("some_frames_failed")
    if any(e.reason == FRAMES_OVER_LIMIT for e in errors):
        reasons.append(FRAMES_OVER_LIMIT)
    if fused.refused:
        reasons.append("evidence_refused_clock_skew")
    reasons.extend(time_reasons(event.occurred_at.timestamp(), prepared.judged_at, skew))
    record = decision_record(event, decision, reasons, len(estimates), len(errors), prepared.judged_at, model_version)
    return DecidedEvent(prepared, policy_event, decision, fused.belief, error_floor, fused.refused == 0, record)


def decision_record(
    event: Event,
    decision: Decision,
    reasons: list[str],
    scored: int,
    failed: int,
    judged_at: float,
    model_version: str,
) -> dict[str, Any]:
    ev = decision.evidence
    rec = event.source
    return {
        # Derived from the idempotency key, so a redelivered event yields the same decision id.
        "decision_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "agegate:" + rec.idempotency_key)),
        "idempotency_key": rec.idempotency_key,
        "user_id": event.user_id,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "source_topic": rec.topic,
        "source_partition": rec.partition,
        "source_offset": rec.offset,
        "jurisdiction": decision.jurisdiction,
        "surface": decision.surface,
        "action": decision.action.value,
        "reason_codes": reasons,
        "evidence": {
            "age_mean": ev.age_mean,
            "age_std": ev.age_std,
            "observations": ev.observations,
            "threshold": ev.threshold,
            "buffer": ev.buffer,
            "p_at_least_threshold": ev.p_at_least_threshold,
            "verified": ev.verified,
            "declared_age": ev.declared_age,
            "frames_scored": scored,
            "frames_failed": failed,
        },
        "model_version": model_version if scored else None,
        "policy_version": decision.policy_version,
        "event_time": event.occurred_at,
        "decided_at": dt.datetime.fromtimestamp(round(judged_at, 3), tz=dt.UTC),
    }


def declared_age(event: Event, judged_at: float) -> float | None:
    """The declared age as of processing time: a declared age as stated, a birth date aged to then."""
    if event.declared_age is not None:
        return event.declared_age
    if event.declared_birth_date is not None:
        born = dt.datetime.combine(event.declared_birth_date, dt.time(), tzinfo=dt.UTC).timestamp()
        return (judged_at - born) / YEAR_S
    return None


def time_reasons(event_time: float, judged_at: float, skew: ClockSkewRule) -> list[str]:
    """Audit codes for an event whose own timestamp disagrees with processing time (it changes nothing)."""
    if event_time > judged_at + skew.future_tolerance_s:
        return ["event_time_in_future"]
    if event_time < judged_at - skew.max_past_s:
        return ["event_time_too_old"]
    return []
