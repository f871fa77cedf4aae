"""The enforcement pipeline for one source event, independent of the Kafka client driving it.

decode -> resolve frames -> micro-batched inference -> belief update (one pipelined Redis round
trip for all events ready together) -> policy -> decision or dead letter, awaited until Kafka has
acknowledged it. The worker (faust) and the replay tool (confluent-kafka) both drive this class;
they own offsets and commit only what `process` has finished.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from model.engine import EncodedFrame, FrameError, FrameEstimate, FrameResult
from stream import metrics
from stream.belief import YEAR_S, Belief, ClockSkewRule, Evidence, event_evidence
from stream.belief_store import ApplyResult, BeliefStore, SurfaceKey
from stream.codec import AvroCodec
from stream.errors import DecodeError, DependencyUnavailable, InvalidEvent
from stream.pipeline.frames import FRAMES_OVER_LIMIT, TRANSIENT_REASONS, FrameResolver
from stream.log import get_logger
from stream.policy import Action, Decision, Policy, PolicyEvent, decide
from stream.registry import DECISION, FEEDBACK, SIGNUP, UPLOAD

if TYPE_CHECKING:
    from stream.pipeline.shadow import ShadowScorer

log = get_logger("agegate.pipeline")

SURFACE_FOR_ACCOUNT = "account_creation"


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One consumed message, transport-neutral."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class Sink(Protocol):
    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        """Resolves once Kafka has acknowledged the message."""


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "decision" or "dead_letter"
    action: str | None = None  # for decisions
    reason: str | None = None  # for dead letters
    decision: dict[str, Any] | None = None


class InvalidShareGuard:
    """Trips when more than `limit` of the last `window` events were invalid.

    Most input being invalid is a deployment mistake (wrong topic, producers' schema, registry),
    not bad users. Tripping only records why: the driver decides what it means. The worker stops
    taking input, keeping its place, until an operator resumes it (`reset`); replay never trips.
    """

    def __init__(self, limit: float, window: int) -> None:
        self.limit = limit
        self._recent: deque[bool] = deque(maxlen=window)
        self.tripped: str | None = None  # why, once tripped; None until then and after `reset`

    def record(self, invalid: bool) -> None:
        self._recent.append(invalid)
        if self.tripped is None and len(self._recent) == self._recent.maxlen:
            share = sum(self._recent) / len(self._recent)
            if share > self.limit:
                self.tripped = (
                    f"{share:.0%} of the last {len(self._recent)} events were invalid (limit {self.limit:.0%}): "
                    "check the topic names, producers' schemas and the schema registry"
                )

    def reset(self) -> None:
        """Start over with an empty window (an operator resumed input)."""
        self._recent.clear()
        self.tripped = None


@dataclass
class _BeliefRequest:
    user_id: str
    evidences: list[Evidence]
    verified: tuple[str, float, float] | None  # (event_id, age, verified_at)
    surface_key: SurfaceKey
    future: asyncio.Future[tuple[Belief | None, Action | None, int]] = field(repr=False)


class RecentBeliefs:
    """Users this process recently stored a belief for (bounded, least recently used dropped first).

    A belief Redis no longer has for one of them was lost (FLUSHALL, a failover without persistence,
    an operator's DEL), not never made: the user is judged as new, so the loss must be seen.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._users: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def add(self, user_id: str) -> None:
        self._users[user_id] = None
        self._users.move_to_end(user_id)
        if len(self._users) > self.capacity:
            self._users.popitem(last=False)


class BeliefStage:
    """Coalesces the belief updates of events that became ready together into pipelined round trips.

    Events of one user in the same flush go in successive rounds, so each event's decision sees the
    belief after exactly the events before it. Redis faults are retried with bounded exponential
    backoff and jitter, forever: nothing is skipped, and the in-flight limit pauses consumption.
    """

    def __init__(
        self, store: BeliefStore, *, clock: Callable[[], float], model_version: str, error_floor: float
    ) -> None:
        self.store = store
        self._clock = clock
        self.model_version = model_version
        self.error_floor = error_floor
        self._pending: list[_BeliefRequest] = []
        self._flush_scheduled = False
        self._flush_task: asyncio.Task[None] | None = None
        self._pending_actions: dict[SurfaceKey, tuple[Action, list[asyncio.Future[None]]]] = {}
        self._retry_wait = wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.2)
        self.recent = RecentBeliefs()

    def submit(
        self,
        user_id: str,
        evidences: list[Evidence],
        surface_key: SurfaceKey,
        verified: tuple[str, float, float] | None = None,
    ) -> asyncio.Future[tuple[Belief | None, Action | None, int]]:
        loop = asyncio.get_running_loop()
        request = _BeliefRequest(user_id, evidences, verified, surface_key, loop.create_future())
        self._pending.append(request)
        self._schedule_flush()
        return request.future

    def record_action(self, key: SurfaceKey, action: Action) -> asyncio.Future[None]:
        """Queue the hysteresis state write; it rides with the next flush instead of its own round trip.

        A user's next event waits for this event to finish (per-user order), and a flush writes
        queued actions before its belief rounds, so the next decision always sees this action.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _, waiting = self._pending_actions.get(key, (action, []))
        self._pending_actions[key] = (action, [*waiting, future])
        self._schedule_flush()
        return future

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # Let every task woken by the same inference batch submit before this round trip.
        for _ in range(3):
            await asyncio.sleep(0)
        batch, self._pending, self._flush_scheduled = self._pending, [], False
        actions, self._pending_actions = self._pending_actions, {}
        if actions:
            try:
                await self.retrying(
                    functools.partial(self.store.record_actions, {k: a for k, (a, _) in actions.items()})
                )
            except Exception as exc:
                for _, futures in actions.values():
                    for f in futures:
                        f.set_exception(exc)
            else:
                for _, futures in actions.values():
                    for f in futures:
                        f.set_result(None)
        rounds: list[list[_BeliefRequest]] = []
        depth: dict[str, int] = defaultdict(int)
        for request in batch:
            k = depth[request.user_id]
            depth[request.user_id] += 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(request)
        for round_ in rounds:
            try:
                await self.retrying(functools.partial(self._apply_round, round_))
            except Exception as exc:  # not a Redis outage: fail these events (the worker stops)
                for request in round_:
                    if not request.future.done():
                        request.future.set_exception(exc)

    async def retrying(self, fn: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        async for attempt_ctx in AsyncRetrying(
            retry=retry_if_exception_type(DependencyUnavailable),
            wait=self._retry_wait,
            reraise=True,
            before_sleep=lambda state: self._on_retry(state.attempt_number),
        ):
            with attempt_ctx:
                attempt += 1
                await fn()
        if attempt > 1:
            metrics.DEPENDENCY_DOWN.labels("redis").set(0)
            log.info("redis reachable again; resuming", attempts=attempt)

    def _on_retry(self, attempt: int) -> None:
        metrics.DEPENDENCY_DOWN.labels("redis").set(1)
        metrics.RETRIES.labels("redis").inc()
        if attempt == 1 or attempt % 10 == 0:
            log.warning("redis unavailable; consumption pauses while retrying", attempt=attempt)

    async def _apply_round(self, round_: list[_BeliefRequest]) -> None:
        now = self._clock()
        started = time.perf_counter()
        verified = [r for r in round_ if r.verified is not None]
        estimated = [r for r in round_ if r.verified is None]
        beliefs: dict[str, Belief | None] = {}
        existed: dict[str, bool] = {}  # whether the user had a belief before this round
        previous: dict[str, Mapping[str, Action]] = {}
        # Online accuracy: what the estimated belief said when the verified age arrived.
        priors = await self.store.get_many([r.user_id for r in verified], now=now) if verified else {}
        for r in verified:
            assert r.verified is not None
            event_id, age, at = r.verified
            try:
                beliefs[r.user_id] = await self.store.apply_verified(
                    r.user_id, event_id=event_id, verified_age=age, verified_at=at, now=now
                )
            except InvalidEvent as exc:
                r.future.set_exception(exc)
        if estimated:
            result: ApplyResult = await self.store.apply(
                {r.user_id: r.evidences for r in estimated}, now=now, model_version=self.model_version,
                floor=self.error_floor,
            )
            for r in estimated:
                if r.user_id in result.errors:  # this user's data only: its event is dead-lettered
                    r.future.set_exception(result.errors[r.user_id])
                    continue
                belief = beliefs[r.user_id] = result.get(r.user_id)
                applied_now = len(result.applied.get(r.user_id, ()))
                existed[r.user_id] = belief is not None and belief.observations > applied_now
                previous[r.user_id] = result.previous_actions.get(r.user_id, {})
            refused = {r.user_id: len(result.refused.get(r.user_id, ())) for r in estimated}
        else:
            refused = {}
        prev_actions = await self.store.get_previous_actions([r.surface_key for r in verified]) if verified else {}
        metrics.BELIEF_UPDATE_SECONDS.observe(time.perf_counter() - started)
        for r in verified:
            existed[r.user_id] = priors.get(r.user_id) is not None
        self._notice_lost(existed, beliefs)
        for r in verified:  # observed once the round succeeded, so a retried round counts once
            prior = priors.get(r.user_id)
            if r.verified is not None and prior is not None and not prior.verified and not r.future.done():
                _, age, at = r.verified
                metrics.ONLINE_ABS_ERROR_YEARS.observe(abs(prior.age_at(at) - age))
        for r in round_:
            if r.future.done():
                continue
            if r.verified is not None:
                prev = prev_actions.get(r.surface_key)
            else:  # previous_actions is keyed "jurisdiction/surface"
                prev = previous.get(r.user_id, {}).get(r.surface_key.field.removeprefix("a:"))
            r.future.set_result((beliefs.get(r.user_id), prev, refused.get(r.user_id, 0)))

    def _notice_lost(self, existed: Mapping[str, bool], beliefs: Mapping[str, Belief | None]) -> None:
        lost = [u for u, was in existed.items() if not was and u in self.recent]
        if lost:
            metrics.BELIEFS_LOST.inc(len(lost))
            log.error("beliefs this worker stored are gone from redis; those users are judged as new "
                      "(check for FLUSHALL, a failover without persistence, or eviction)", users=len(lost))
        for u, belief in beliefs.items():
            if belief is not None:
                self.recent.add(u)


class Pipeline:
    """Processes events; `process` returns when the event's decision or dead letter is acknowledged."""

    def __init__(
        self,
        *,
        codec: AvroCodec,
        score: Callable[[EncodedFrame], Awaitable[FrameResult]],
        model_version: str,
        error_floor: float,
        store: BeliefStore,
        policy: Policy,
        sink: Sink,
        resolver: FrameResolver,
        topics: Mapping[str, str],
        guard: InvalidShareGuard,
        clock: Callable[[], float] = time.time,
        processed_at: Callable[[SourceRecord], float] | None = None,
        shadow: ShadowScorer | None = None,
    ) -> None:
        """`processed_at(record)` is when an event counts as processed (default: `clock()`): every age
        claim of the event is taken as of then, and its decision is judged then (see `_decide`)."""
        self.codec = codec
        self.shadow = shadow
        self._score = score
        self.model_version = model_version
        self.error_floor = error_floor
        self.store = store
        self.policy = policy
        self.sink = sink
        self.resolver = resolver
        self.topics = topics
        self.guard = guard
        self.clock = clock
        self._processed_at = processed_at or (lambda _rec: clock())
        self.beliefs = BeliefStage(store, clock=clock, model_version=model_version, error_floor=error_floor)
        self._user_tail: dict[str, asyncio.Future[None]] = {}
        self._expected = {
            topics["signups"]: (SIGNUP,),
            topics["uploads"]: (UPLOAD,),
            topics["feedback"]: (FEEDBACK,),
        }

    async def process(self, rec: SourceRecord) -> Outcome:
        metrics.EVENTS_CONSUMED.labels(rec.topic).inc()
        try:
            decoded = self.codec.decode(rec.value, self._expected.get(rec.topic))
        except DecodeError as exc:
            return await self._dead_letter(rec, exc)
        record = decoded.record
        user_id = str(record["user_id"])
        # One user's events are handled in partition order from here on (belief and hysteresis).
        previous_tail = self._user_tail.get(user_id)
        my_tail: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._user_tail[user_id] = my_tail
        try:
            results, shadow_results = await self._score_frames(record.get("frames", []))
            if previous_tail is not None:
                await previous_tail
            outcome = await self._decide(rec, decoded.subject, record, results, shadow_results)
        except InvalidEvent as exc:
            outcome = await self._dead_letter(rec, exc)
        finally:
            my_tail.set_result(None)
            if self._user_tail.get(user_id) is my_tail:
                del self._user_tail[user_id]
        return outcome

    async def _score_frames(
        self, frames: Sequence[dict[str, Any]]
    ) -> tuple[list[FrameResult], list[FrameResult] | None]:
        """Live results per frame, and the shadow model's for the same frames when one is configured."""
        resolved = await self.resolver.resolve_all(frames)

        async def one(item: EncodedFrame | FrameError) -> FrameResult:
            return item if isinstance(item, FrameError) else await self._score(item)

        live = asyncio.gather(*(one(item) for item in resolved))
        if self.shadow is None or not resolved:
            return list(await live), None
        live_results, shadow_results = await asyncio.gather(live, self.shadow.score_resolved(resolved))
        return list(live_results), list(shadow_results)

    async def _decide(
        self,
        rec: SourceRecord,
        subject: str,
        record: dict[str, Any],
        results: list[FrameResult],
        shadow_results: list[FrameResult] | None = None,
    ) -> Outcome:
        """Fuse the event's evidence and decide.

        Time rule (one for every event type): the producer's clock never makes anyone older. Every age
        claim of the event (frame estimates, a verified age, a declared age or birth date) is taken as
        of processing time, and the decision is judged at processing time; `occurred_at` is recorded
        for audit only. So an event dated in the future or far in the past decides exactly as the
        same event dated now, and a forged or delayed timestamp can never buy an ALLOW.
        """
        user_id = str(record["user_id"])
        event_id = str(record["event_id"])
        event_time = record["occurred_at"].timestamp()
        judged_at = self._processed_at(rec)
        jurisdiction = str(record.get("jurisdiction") or "")
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

        declared_age: float | None = None
        verified: tuple[str, float, float] | None = None
        if subject == FEEDBACK:
            surface = SURFACE_FOR_ACCOUNT
            jurisdiction = jurisdiction or self.policy.default_jurisdiction
            verified = (event_id, float(record["verified_age"]), judged_at)
        elif subject == SIGNUP:
            surface = SURFACE_FOR_ACCOUNT
            declared_age = _declared_age(record, judged_at)
        else:
            surface = str(record["surface"])
        # An event's frames share pose, light and camera: together they are one observation.
        evidence = event_evidence(event_id, judged_at, [(e.mean, e.std) for e in estimates], self.error_floor)
        surface_key = SurfaceKey(user_id, jurisdiction, surface)
        belief, previous, refused = await self.beliefs.submit(
            user_id, [evidence] if evidence is not None else [], surface_key, verified
        )
        policy_event = PolicyEvent(
            jurisdiction, surface, judged_at, declared_age=declared_age, previous_action=previous
        )
        decision = decide(
            belief,
            policy_event,
            self.policy,
            dependency_down=dependency_down,
            now=judged_at,
            half_life_s=self.store.half_life_s,
        )
        if self.shadow is not None and shadow_results is not None:
            await self.shadow.observe(
                rec, record=record, event=policy_event, live=decision, live_results=results,
                shadow_results=shadow_results, belief_after=belief, live_floor=self.error_floor,
                dependency_down=dependency_down, live_applied=refused == 0,
            )
        reasons = list(decision.reason_codes)
        if errors and estimates:
            reasons.append("some_frames_failed")
        if any(e.reason == FRAMES_OVER_LIMIT for e in errors):
            reasons.append(FRAMES_OVER_LIMIT)
        if refused:
            reasons.append("evidence_refused_clock_skew")
        reasons.extend(_time_reasons(event_time, judged_at, self.store.skew))
        action_written = self.beliefs.record_action(
            SurfaceKey(user_id, decision.jurisdiction, surface), decision.action
        )
        value = self._decision_record(
            rec, subject, record, decision, reasons, len(estimates), len(errors), judged_at
        )
        # The offset may be committed only when both the decision and the hysteresis state are stored.
        await asyncio.gather(
            self.sink.send(self.topics["decisions"], user_id.encode(), self.codec.encode(DECISION, value)),
            action_written,
        )
        metrics.DECISIONS.labels(decision.action.value, surface).inc()
        if rec.timestamp_ms > 0:
            metrics.END_TO_END_SECONDS.observe(max(0.0, time.time() - rec.timestamp_ms / 1000))
        self.guard.record(False)
        return Outcome("decision", action=decision.action.value, decision=value)

    def _decision_record(
        self,
        rec: SourceRecord,
        subject: str,
        record: dict[str, Any],
        decision: Decision,
        reasons: list[str],
        scored: int,
        failed: int,
        judged_at: float,
    ) -> dict[str, Any]:
        ev = decision.evidence
        event_time = record["occurred_at"]
        return {
            # Derived from the idempotency key, so a redelivered event yields the same decision id.
            "decision_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "agegate:" + rec.idempotency_key)),
            "idempotency_key": rec.idempotency_key,
            "user_id": str(record["user_id"]),
            "event_id": str(record["event_id"]),
            "event_type": subject.rsplit(".", 1)[-1],
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
            "model_version": self.model_version if scored else None,
            "policy_version": decision.policy_version,
            "event_time": event_time,
            "decided_at": _utc(judged_at),
        }

    async def _dead_letter(self, rec: SourceRecord, exc: InvalidEvent) -> Outcome:
        headers = [
            ("error_class", type(exc).__name__.encode()),
            ("reason", exc.reason.encode()),
            ("detail", exc.detail[:500].encode()),
            ("source_topic", rec.topic.encode()),
            ("source_partition", str(rec.partition).encode()),
            ("source_offset", str(rec.offset).encode()),
            ("first_seen_ms", str(int(self.clock() * 1000)).encode()),
        ]
        await self.sink.send(self.topics["dead_letters"], rec.key, rec.value, headers)
        metrics.DEAD_LETTERS.labels(exc.reason).inc()
        log.warning("dead letter", reason=exc.reason, topic=rec.topic, partition=rec.partition, offset=rec.offset)
        self.guard.record(True)
        return Outcome("dead_letter", reason=exc.reason)


def _declared_age(record: dict[str, Any], judged_at: float) -> float | None:
    """The declared age as of processing time: a declared age as stated, a birth date aged to then."""
    if record.get("declared_age") is not None:
        return float(record["declared_age"])
    birth = record.get("declared_birth_date")
    if birth is not None:
        import datetime as dt

        born = dt.datetime.combine(birth, dt.time(), tzinfo=dt.UTC).timestamp()
        return (judged_at - born) / YEAR_S
    return None


def _time_reasons(event_time: float, judged_at: float, skew: ClockSkewRule) -> list[str]:
    """Audit codes for an event whose own timestamp disagrees with processing time (it changes nothing)."""
    if event_time > judged_at + skew.future_tolerance_s:
        return ["event_time_in_future"]
    if event_time < judged_at - skew.max_past_s:
        return ["event_time_too_old"]
    return []


def _utc(ts: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(round(ts, 3), tz=dt.UTC)
