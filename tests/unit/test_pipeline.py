"""The pipeline over batches, without services: a fake sink and scorer and an in-memory belief store.

The belief store is the in-memory repository (stream/adapters/memory_beliefs.py, held to the same
contract as Redis by tests/contract/test_belief_repository.py), counting its round trips.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.engine import EncodedFrame, FrameEstimate, FrameResult
from stream import metrics
from stream.adapters.codec import AvroCodec
from stream.adapters.memory_beliefs import InMemoryBeliefStore
from stream.core.belief import ErrorFloor, Evidence, p_at_least
from stream.core.belief_updates import ApplyResult, SurfaceKey
from stream.core.policy import Action, Policy, default_policy_path, load_policy
from stream.core.subjects import SIGNUP, UPLOAD
from stream.errors import DependencyUnavailable
from stream.pipeline.decide import DecidedEvent
from stream.pipeline.frames import FrameResolver, FrameStores
from stream.pipeline.pipeline import InvalidShareGuard, Pipeline
from stream.pipeline.ports import SourceRecord
from stream.tools import events

DAY_S = 86400.0
NOW = 1_750_000_000.0
POLICY_VERSION = load_policy(None).version  # hysteresis state is kept per policy version
TOPICS = {"signups": "s", "uploads": "u", "feedback": "f", "decisions": "d", "dead_letters": "dl"}
SUBJECT_TOPIC = {SIGNUP: "s", UPLOAD: "u"}


class CountingBeliefs(InMemoryBeliefStore):
    """The in-memory belief store, counting what a Redis store would do in round trips."""

    def __init__(self) -> None:
        super().__init__(half_life_s=365 * DAY_S, ttl_s=400 * DAY_S, clock=lambda: NOW)
        self.applies: list[list[str]] = []  # users per `apply` call (one Redis round trip each)
        self.action_writes: list[dict[SurfaceKey, Action]] = []
        self.outage_calls = 0  # the next this many calls find the store unreachable

    async def apply(
        self, updates: Mapping[str, Sequence[Evidence]], *, now: float, model_version: str, floor: float
    ) -> ApplyResult:
        if self.outage_calls:
            self.outage_calls -= 1
            raise DependencyUnavailable("redis: connection refused")
        self.applies.append(list(updates))
        return await super().apply(updates, now=now, model_version=model_version, floor=floor)

    async def record_actions(self, actions: Mapping[SurfaceKey, Action]) -> None:
        self.action_writes.append(dict(actions))
        await super().record_actions(actions)


class FakeScorer:
    """A frame's bytes are its age ("35" scores 35 years); a gate can hold scoring back."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate: asyncio.Event | None = None

    async def score_many(self, frames: Sequence[EncodedFrame]) -> list[FrameResult]:
        self.calls.append(len(frames))
        if self.gate is not None:
            await self.gate.wait()
        return [FrameEstimate(mean=float(f.data.decode()), std=1.0) for f in frames]


class FakeSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, dict[str, bytes]]] = []
        self.batches: list[int] = []  # messages per send_all call

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        self.sent.append((topic, key, value, dict(headers)))
        return (0, len(self.sent))

    async def send_all(
        self, messages: Sequence[tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
    ) -> None:
        self.batches.append(len(messages))
        for topic, key, value, headers in messages:
            await self.send(topic, key, value, headers)


def make(
    codec: Any = None, *, policy: Policy | None = None, store: CountingBeliefs | None = None
) -> tuple[Pipeline, CountingBeliefs, FakeScorer, FakeSink]:
    store, scorer, sink = store or CountingBeliefs(), FakeScorer(), FakeSink()
    pipeline = Pipeline(
        codec=codec or AvroCodec(),
        scorer=scorer,
        model_version="m@1",
        error_floor=ErrorFloor(2.0),
        store=store,
        policy=policy or load_policy(None),
        sink=sink,
        resolver=FrameResolver(FrameStores.parse("", max_bytes=1 << 20, timeout_s=1.0)),
        topics=TOPICS,
        guard=InvalidShareGuard(0.5, 100),
        clock=lambda: NOW,
    )
    return pipeline, store, scorer, sink


_offsets: dict[str, int] = {}


def record(subject: str, value: dict[str, Any]) -> SourceRecord:
    topic = SUBJECT_TOPIC[subject]
    offset = _offsets[topic] = _offsets.get(topic, -1) + 1
    return SourceRecord(
        topic, 0, offset, value["user_id"].encode(), AvroCodec().encode(subject, value), int(time.time() * 1000)
    )


def upload(user: str, *ages: int) -> SourceRecord:
    frames = [events.inline_frame(f"f{i}", str(a).encode()) for i, a in enumerate(ages)]
    return record(UPLOAD, events.upload(user, at=NOW, surface="profile_photo", frames=frames))


async def test_a_batch_gives_one_outcome_per_record_in_order_with_frames_scored_in_one_call() -> None:
    pipeline, _, scorer, sink = make()
    garbage = SourceRecord("u", 0, 99, b"k", b"\x07not avro", 0)
    batch = [upload("a", 35, 36), garbage, upload("b", 10), record(SIGNUP, events.signup("c", at=NOW, declared_age=30))]
    outcomes = await pipeline.process(batch)
    assert [o.kind for o in outcomes] == ["decision", "dead_letter", "decision", "decision"]
    assert scorer.calls == [3]  # every frame of the batch in one call
    assert [o.decision["idempotency_key"] for o in outcomes if o.decision] == [
        r.idempotency_key for r in batch if r is not garbage
    ]
    assert [t for t, *_ in sink.sent] == ["d", "dl", "d", "d"]
    assert sink.batches == [4]  # the batch's decisions and dead letters produced together, awaited once
    _, key, value, headers = sink.sent[1]
    assert (key, value, headers["reason"]) == (b"k", b"\x07not avro", outcomes[1].reason.encode())  # type: ignore[union-attr]


def _step_counts() -> dict[str, float]:
    return {
        step: metrics.REGISTRY.get_sample_value("agegate_step_seconds_count", {"step": step}) or 0.0
        for step in ("decode", "score", "fuse", "emit")
    }


async def test_each_batch_reports_the_time_it_spent_in_every_step_once() -> None:
    """agegate_step_seconds (the dashboard's "Where a batch's time goes"): one observation per step
    per batch, whatever the batch holds."""
    pipeline, *_ = make()
    before = _step_counts()
    await pipeline.process([upload("a", 35), upload("b", 10, 12)])
    await pipeline.process([upload("c", 40)])
    after = _step_counts()
    assert {step: after[step] - before[step] for step in after} == dict.fromkeys(after, 2.0)


async def test_a_new_policy_version_judges_afresh_instead_of_holding_the_old_versions_allow(tmp_path: Path) -> None:
    # The same belief, ALLOWed under a laxer policy, lands in the packaged policy's hysteresis band
    # (P(age >= 16) in [0.85, 0.95) on profile_photo): a held ALLOW there would be the old bar's.
    lax_text = default_policy_path().read_text().replace('version = "', 'version = "lax-', 1)
    lax_text = lax_text.replace(
        "[jurisdictions.DEFAULT.surfaces.profile_photo]\nmin_age = 13\nbuffer_years = 3.0\nrequired_confidence = 0.95",
        "[jurisdictions.DEFAULT.surfaces.profile_photo]\nmin_age = 13\nbuffer_years = 1.0\nrequired_confidence = 0.90",
    )
    (tmp_path / "lax.toml").write_text(lax_text)
    lax, strict = load_policy(tmp_path / "lax.toml"), load_policy(None)
    assert lax.version != strict.version
    assert lax.jurisdictions["DEFAULT"].surfaces["profile_photo"].buffer_years == 1.0
    old, store, _, _ = make(policy=lax)
    new, _, _, _ = make(policy=strict, store=store)
    first = await old.process([upload("a", 18, 19), upload("a", 18, 19)])
    assert [o.decision["action"] for o in first if o.decision] == ["REQUIRE_VERIFICATION", "ALLOW"]
    [after] = await new.process([upload("a", 18, 19)])
    assert after.decision is not None
    ev = after.decision["evidence"]
    rule = strict.jurisdictions["DEFAULT"].surfaces["profile_photo"]
    p = p_at_least(ev["age_mean"], ev["age_std"], ev["threshold"] + ev["buffer"])
    assert rule.required_confidence - strict.hysteresis_margin <= p < rule.required_confidence  # the band
    assert after.decision["action"] == "REQUIRE_VERIFICATION"  # judged afresh, not held open
    assert "hysteresis_hold" not in after.decision["reason_codes"]


async def test_a_users_second_event_in_a_batch_sees_the_belief_after_the_first() -> None:
    pipeline, store, _, _ = make()
    outcomes = await pipeline.process([upload("a", 35), upload("b", 40), upload("a", 36)])
    observations = [o.decision["evidence"]["observations"] for o in outcomes if o.decision]
    assert observations == [1, 1, 2]
    assert store.applies == [["a", "b"], ["a"]]  # one round trip per user depth, not per event
    assert len(store.action_writes) == 1  # the batch's hysteresis state in one write
    assert set(store.action_writes[0]) == {SurfaceKey(u, "US", "profile_photo", POLICY_VERSION) for u in ("a", "b")}


class Observer:
    def __init__(self) -> None:
        self.decided: list[DecidedEvent] = []

    async def observe_decided(self, decided: Sequence[DecidedEvent]) -> None:
        self.decided.extend(decided)


async def test_a_second_event_in_the_batch_sees_the_action_decided_for_the_first() -> None:
    pipeline, store, _, _ = make()
    observer = pipeline.observer = Observer()
    await pipeline.process([upload("a", 35), upload("b", 12), upload("a", 35)])
    first, _, second = observer.decided
    assert first.policy_event.previous_action is None
    # Not yet written to the store when the second was decided: it came from the batch itself.
    assert second.policy_event.previous_action == first.decision.action
    key = SurfaceKey("a", "US", "profile_photo", POLICY_VERSION)
    assert (await store.get_previous_actions([key]))[key] == second.decision.action  # written once, after the batch


async def test_batches_in_flight_together_reach_the_belief_step_in_admission_order() -> None:
    pipeline, _, scorer, _ = make()
    scorer.gate = asyncio.Event()
    first = asyncio.ensure_future(pipeline.process([upload("a", 35)]))
    # The second batch has no frames, so it would overtake the first, which waits for inference.
    second = asyncio.ensure_future(pipeline.process([record(SIGNUP, events.signup("a", at=NOW, declared_age=30))]))
    await asyncio.sleep(0.05)
    assert not second.done()  # held behind the first batch's belief step
    scorer.gate.set()
    (one,), (two,) = await asyncio.gather(first, second)
    assert one.decision
    assert two.decision
    assert two.decision["evidence"]["observations"] == 1  # the upload's evidence was fused first


async def test_batches_scored_while_the_belief_step_waits_share_one_step_in_admission_order() -> None:
    """Group commit: under load the belief step grows instead of queueing (one round trip per user
    depth for all of them), and a user's events still fuse in the order their batches were admitted."""
    pipeline, store, scorer, _ = make()
    scorer.gate = asyncio.Event()
    batches = [[upload("a", 30)], [upload("b", 40), upload("a", 31)], [upload("c", 50)], [upload("a", 32)]]
    pending = [asyncio.ensure_future(pipeline.process(b)) for b in batches]
    await asyncio.sleep(0)
    scorer.gate.set()
    results = await asyncio.gather(*pending)
    assert pipeline.belief_steps == 1
    assert store.applies == [["a", "b", "c"], ["a"], ["a"]]  # by user depth across the four batches
    observations = [o.decision["evidence"]["observations"] for out in results for o in out if o.decision]
    assert observations == [1, 1, 2, 1, 3]  # a's three events in admission order


async def test_a_batch_that_fails_before_the_belief_step_does_not_hold_back_the_next() -> None:
    pipeline, _, scorer, _ = make()
    scorer.gate = asyncio.Event()
    failing = asyncio.ensure_future(pipeline.process([upload("a", 30)]))
    after = asyncio.ensure_future(pipeline.process([upload("b", 40)]))
    await asyncio.sleep(0)
    failing.cancel()  # e.g. shutdown cancelled it while it waited for inference
    scorer.gate.set()
    (outcome,) = await asyncio.wait_for(after, timeout=30)  # not stuck behind the cancelled batch
    assert outcome.kind == "decision"
    assert failing.cancelled()


async def test_the_invalid_share_guard_sees_every_record_of_a_batch() -> None:
    pipeline, _, _, _ = make()
    garbage = [SourceRecord("u", 0, 1000 + i, None, b"\x00bad", 0) for i in range(100)]
    outcomes = await pipeline.process(garbage)
    assert all(o.kind == "dead_letter" for o in outcomes)
    assert pipeline.guard.tripped is not None


class FlakyRegistryCodec(AvroCodec):
    """The local codec, but the schema registry is unreachable for the first `outages` calls."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    def _maybe_down(self) -> None:
        if self.outages:
            self.outages -= 1
            raise DependencyUnavailable("schema registry: connection refused")

    def decode(self, data: bytes | None, expected: Any = None) -> Any:
        self._maybe_down()
        return super().decode(data, expected)

    def encode(self, subject: str, record: Mapping[str, Any]) -> bytes:
        self._maybe_down()
        return super().encode(subject, record)


async def test_a_registry_outage_is_waited_out_not_dead_lettered_or_fatal() -> None:
    """Decoding and encoding both meet the outage; the valid events are decided once it is over."""
    pipeline, _, _, sink = make(codec=FlakyRegistryCodec(outages=2))
    outcomes = await pipeline.process([upload("a", 35), upload("b", 40)])
    assert [o.kind for o in outcomes] == ["decision", "decision"]
    assert [topic for topic, *_ in sink.sent] == ["d", "d"]


async def test_a_redis_outage_is_waited_out_and_each_event_fused_once() -> None:
    pipeline, store, _, _ = make()
    store.outage_calls = 2
    outcomes = await pipeline.process([upload("a", 35), upload("a", 36)])
    assert [o.decision["evidence"]["observations"] for o in outcomes if o.decision] == [1, 2]
    assert store.applies == [["a"], ["a"]]  # the failed attempts applied nothing


async def test_scored_frames_of_consenting_users_are_retained_with_the_decision() -> None:
    from stream.core.retention import frame_key
    from stream.core.subjects import RETAINED_FRAME

    pipeline, _, _, sink = make()
    pipeline.retained_topic = "rf"
    frames = [events.inline_frame(f"f{i}", str(a).encode()) for i, a in enumerate((35, 36))]
    yes = events.upload("a", at=NOW, surface="profile_photo", frames=frames, consent=True)
    no = events.upload("b", at=NOW, surface="profile_photo", frames=frames[:1], consent=False)
    outcomes = await pipeline.process([record(UPLOAD, yes), record(UPLOAD, no)])
    assert [o.kind for o in outcomes] == ["decision", "decision"]
    retained = [(key, value) for topic, key, value, _ in sink.sent if topic == "rf"]
    assert [key for key, _ in retained] == [frame_key("a", str(yes["event_id"]), f"f{i}") for i in range(2)]
    first = AvroCodec().decode(retained[0][1], RETAINED_FRAME).record
    assert (first["user_id"], first["frame_id"], first["data"], first["content_type"]) == (
        "a",
        "f0",
        b"35",
        "image/jpeg",
    )


async def test_a_pipeline_without_a_retained_topic_keeps_nothing() -> None:
    pipeline, _, _, sink = make()
    frames = [events.inline_frame("f0", b"35")]
    await pipeline.process([record(UPLOAD, events.upload("a", at=NOW, surface="video", frames=frames, consent=True))])
    assert [t for t, *_ in sink.sent] == ["d"]
