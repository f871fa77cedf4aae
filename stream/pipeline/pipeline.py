"""The enforcement pipeline over batches of source records, independent of the Kafka client driving it.

decode -> resolve frames -> micro-batched inference -> fuse (belief update, one pipelined Redis round
trip per user depth; batches waiting for it share one step) -> decide -> emit (decisions and dead
letters, awaited once per batch). The
step contract (batches in and out, offsets travel with the batch, explicit backpressure) is written
in ports.py; the one driver that feeds this class and commits what it finished is
stream/runners/driver.py, used by the worker (faust), replay (confluent-kafka), benchmarks and tests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from model.engine import EncodedFrame, FrameError, FrameResult
from stream import metrics
from stream.core.belief import ErrorFloor
from stream.core.belief_updates import SurfaceKey
from stream.core.policy import Action, Policy
from stream.core.subjects import DECISION
from stream.errors import InvalidEvent
from stream.log import get_logger
from stream.pipeline.decide import DecidedEvent, Prepared, decide_event, prepare
from stream.pipeline.decode import Event, decode_batch, subjects_by_topic
from stream.pipeline.emit import Message, await_all, dead_letter, retained_frames
from stream.pipeline.frames import FrameResolver
from stream.pipeline.fuse import BeliefStage, Fused, rounds_by_depth
from stream.pipeline.ports import BeliefRepository, Clock, Codec, Outcome, Scorer, Sink, SourceRecord
from stream.pipeline.retry import until_available

log = get_logger("agegate.pipeline")


class DecisionObserver(Protocol):
    """Sees every batch's decided events after the live decisions are made (the shadow scorer);
    awaited with the batch's sends, so its output is published before the batch is committed."""

    async def observe_decided(self, decided: Sequence[DecidedEvent]) -> None: ...


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

    @classmethod
    def never(cls) -> InvalidShareGuard:
        """A guard that cannot trip (a replay reports invalid input in its output instead)."""
        return cls(1.0, 1)

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


class _StepTimer:
    """Observes, per batch, the time since the previous step ended (agegate_step_seconds)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def done(self, step: str) -> None:
        now = time.perf_counter()
        metrics.STEP_SECONDS.labels(step).observe(now - self._last)
        self._last = now


class _BeliefTurn:
    """A batch's place in the belief step's order: its scored events once ready, its decisions once fused."""

    __slots__ = ("done", "prepared", "skipped")

    def __init__(self, done: asyncio.Future[list[DecidedEvent | InvalidEvent]]) -> None:
        self.done = done
        self.prepared: list[Prepared | InvalidEvent] | None = None
        self.skipped = False  # failed before the belief step

    @property
    def ready(self) -> bool:
        return self.skipped or self.prepared is not None


class Pipeline:
    """`process(records)` answers one Outcome per record once its decision or dead letter is acknowledged.

    Batches in flight together share micro-batches; the belief step runs one at a time, taking the
    batches in the order `process` was called (those scored and waiting together share one step), so
    a user's events are fused in partition order across batches.
    """

    def __init__(
        self,
        *,
        codec: Codec,
        scorer: Scorer,
        model_version: str,
        error_floor: ErrorFloor,
        store: BeliefRepository,
        policy: Policy,
        sink: Sink,
        resolver: FrameResolver,
        topics: Mapping[str, str],
        guard: InvalidShareGuard,
        clock: Clock = time.time,
        processed_at: Callable[[SourceRecord], float] | None = None,
        observer: DecisionObserver | None = None,
        retained_topic: str | None = None,
    ) -> None:
        """`processed_at(record)` is when an event counts as processed (default: `clock()`): every age
        claim of the event is taken as of then, and its decision is judged then (decide.py).
        `retained_topic`: where consenting users' scored frames go (the worker's; None keeps nothing)."""
        self.codec = codec
        self.scorer = scorer
        self.model_version = model_version
        self.error_floor = error_floor
        self.store = store
        self.policy = policy
        self.sink = sink
        self.resolver = resolver
        self.topics = topics
        self.guard = guard
        self.clock = clock
        self.observer = observer
        self.retained_topic = retained_topic
        self._processed_at = processed_at or (lambda _rec: clock())
        self.beliefs = BeliefStage(store, clock=clock, model_version=model_version, error_floor=error_floor.minimum)
        self._expected = subjects_by_topic(topics)
        # Batches admitted and not yet through the belief step, in admission order (see _run_beliefs).
        self._belief_queue: deque[_BeliefTurn] = deque()
        self._belief_runner: asyncio.Task[None] | None = None
        self.belief_steps = 0  # belief steps run (several waiting batches share one)

    def process(self, records: Sequence[SourceRecord]) -> Awaitable[list[Outcome]]:
        """Admit a batch now (its place in the belief step's order is taken here, synchronously)."""
        turn = _BeliefTurn(asyncio.get_running_loop().create_future())
        self._belief_queue.append(turn)
        return self._process(records, turn)

    async def _process(self, records: Sequence[SourceRecord], turn: _BeliefTurn) -> list[Outcome]:
        step = _StepTimer()
        try:
            for rec in records:
                metrics.EVENTS_CONSUMED.labels(rec.topic).inc()
            decoded = await until_available(self._decode(records), dependency="schema_registry")
            step.done("decode")
            turn.prepared = await self._score(decoded)
            step.done("score")
        except BaseException:
            turn.skipped = True  # a bug (or cancellation): later batches must not wait for this one
            raise
        finally:
            self._kick_beliefs()
        done = await turn.done
        step.done("fuse")
        outcomes = await self._emit(records, done)
        step.done("emit")
        return outcomes

    def _kick_beliefs(self) -> None:
        if self._belief_runner is None or self._belief_runner.done():
            self._belief_runner = asyncio.get_running_loop().create_task(self._run_beliefs(), name="belief-step")

    async def _run_beliefs(self) -> None:
        """The belief step, one at a time, in admission order; every batch scored and waiting at the
        head of the queue joins the same step (group commit).

        A user's events are fused in partition order because batches enter in admission order and
        `rounds_by_depth` keeps each user's events in order within a step. Joining waiting batches is
        what lets the worker keep up under load: a step costs about two Redis round trips whatever
        its size, so the busier the worker, the larger (and cheaper per event) its steps.
        """
        while self._belief_queue and self._belief_queue[0].ready:
            group: list[tuple[_BeliefTurn, list[Prepared | InvalidEvent]]] = []
            while self._belief_queue and self._belief_queue[0].ready:
                turn = self._belief_queue.popleft()
                if turn.prepared is not None:
                    group.append((turn, turn.prepared))
            if not group:
                continue
            self.belief_steps += 1
            try:
                done = await self._fuse_and_decide([item for _, prepared in group for item in prepared])
            except asyncio.CancelledError:
                for turn, _ in group:
                    turn.done.cancel()
                raise
            except Exception as exc:  # a bug: every batch of the step fails (nothing is released)
                for turn, _ in group:
                    turn.done.set_exception(exc)
                continue
            start = 0
            for turn, prepared in group:
                turn.done.set_result(done[start : start + len(prepared)])
                start += len(prepared)

    async def _score(self, decoded: Sequence[Event | InvalidEvent]) -> list[Prepared | InvalidEvent]:
        """Resolve and score every frame of the batch in one call; results mapped back per event."""
        events = [e for e in decoded if isinstance(e, Event)]
        resolved = await self.resolver.resolve_many([e.frames for e in events])
        frames = [f for row in resolved for f in row if isinstance(f, EncodedFrame)]
        scores = iter(await self.scorer.score_many(frames))
        per_event: dict[int, tuple[list[EncodedFrame | FrameError], list[FrameResult]]] = {}
        for event, row in zip(events, resolved, strict=True):
            per_event[id(event)] = (row, [f if isinstance(f, FrameError) else next(scores) for f in row])
        out: list[Prepared | InvalidEvent] = []
        for item in decoded:
            if isinstance(item, InvalidEvent):
                out.append(item)
                continue
            row, results = per_event[id(item)]
            try:
                out.append(
                    prepare(
                        item,
                        row,
                        results,
                        judged_at=self._processed_at(item.source),
                        policy=self.policy,
                        error_floor=self.error_floor,
                    )
                )
            except InvalidEvent as exc:
                out.append(exc)
        return out

    async def _fuse_and_decide(self, prepared: Sequence[Prepared | InvalidEvent]) -> list[DecidedEvent | InvalidEvent]:
        """Belief rounds by user depth, each event decided as soon as its round is back; the batch's
        hysteresis state is written before the next batch's belief step may start."""
        valid = [(i, p) for i, p in enumerate(prepared) if isinstance(p, Prepared)]
        out: list[DecidedEvent | InvalidEvent | None] = [p if isinstance(p, InvalidEvent) else None for p in prepared]
        decided_actions: dict[SurfaceKey, Action] = {}  # every action decided in this batch
        changed: dict[SurfaceKey, Action] = {}  # those that differ from what the store holds
        for round_ in rounds_by_depth([p.request for _, p in valid]):
            fused = await self.beliefs.fuse_round(round_, decided_actions)
            for k, _ in round_:
                i, p = valid[k]
                result = fused[k]
                if isinstance(result, InvalidEvent):
                    out[i] = result
                    continue
                decided = out[i] = self._decide(p, result)
                key = SurfaceKey(p.event.user_id, decided.decision.jurisdiction, p.event.surface, self.policy.version)
                decided_actions[key] = action = decided.decision.action
                # Rewriting the action the store already holds (read for this very key) changes nothing.
                if key in changed or key != p.request.surface_key or action != result.previous:
                    changed[key] = action
        await self.beliefs.record_actions(changed)
        return [item for item in out if item is not None]  # every event is in exactly one round

    def _decide(self, prepared: Prepared, fused: Fused) -> DecidedEvent:
        return decide_event(
            prepared,
            fused,
            policy=self.policy,
            half_life_s=self.store.half_life_s,
            skew=self.store.skew,
            model_version=self.model_version,
            error_floor=self.error_floor,
        )

    async def _emit(
        self, records: Sequence[SourceRecord], done: Sequence[DecidedEvent | InvalidEvent]
    ) -> list[Outcome]:
        messages: list[Message] = []
        outcomes: list[Outcome] = []
        decided = [d for d in done if isinstance(d, DecidedEvent)]
        now = self.clock()
        encoded = await until_available(self._encode(decided), dependency="schema_registry")
        for rec, item in zip(records, done, strict=True):
            if isinstance(item, InvalidEvent):
                messages.append(dead_letter(self.topics["dead_letters"], rec, item, now=now))
                outcomes.append(Outcome("dead_letter", reason=item.reason))
            else:
                messages.append(Message(self.topics["decisions"], item.event.user_id.encode(), encoded[id(item)][0]))
                messages += encoded[id(item)][1]
                outcomes.append(Outcome("decision", action=item.decision.action.value, decision=item.record))
        pending: list[Awaitable[object]] = [
            self.sink.send_all([(m.topic, m.key, m.value, m.headers) for m in messages])
        ]
        if self.observer is not None and decided:
            pending.append(self.observer.observe_decided(decided))
        await await_all(pending)
        self._account(records, done)
        return outcomes

    def _decode(self, records: Sequence[SourceRecord]) -> Callable[[], Awaitable[list[Event | InvalidEvent]]]:
        async def attempt() -> list[Event | InvalidEvent]:  # a registry outage raises DependencyUnavailable
            return decode_batch(self.codec, self._expected, records)

        return attempt

    def _encode(
        self, decided: Sequence[DecidedEvent]
    ) -> Callable[[], Awaitable[dict[int, tuple[bytes, list[Message]]]]]:
        """Each decision's bytes and its retained frames' messages (consenting users, the worker only)."""

        async def attempt() -> dict[int, tuple[bytes, list[Message]]]:
            out: dict[int, tuple[bytes, list[Message]]] = {}
            for d in decided:
                retained = (
                    retained_frames(self.retained_topic, self.codec, d.event, d.prepared.resolved, d.prepared.results)
                    if self.retained_topic is not None
                    else []
                )
                out[id(d)] = (self.codec.encode(DECISION, d.record), retained)
            return out

        return attempt

    def _account(self, records: Sequence[SourceRecord], done: Sequence[DecidedEvent | InvalidEvent]) -> None:
        wall = time.time()
        for rec, item in zip(records, done, strict=True):
            if isinstance(item, InvalidEvent):
                metrics.DEAD_LETTERS.labels(item.reason).inc()
                log.warning(
                    "dead letter", reason=item.reason, topic=rec.topic, partition=rec.partition, offset=rec.offset
                )
                self.guard.record(True)
                continue
            metrics.DECISIONS.labels(item.decision.action.value, item.event.surface).inc()
            if rec.timestamp_ms > 0:
                metrics.END_TO_END_SECONDS.observe(max(0.0, wall - rec.timestamp_ms / 1000))
            self.guard.record(False)
