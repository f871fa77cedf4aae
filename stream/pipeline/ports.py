"""The step contract, and the ports through which the pipeline reaches the world.

The step contract (every step in this package follows it):
- Batches in, batches out. A step takes the records (or events) the consumer handed over together
  and returns one result per input, in input order: decode -> frames -> score (micro-batches shared
  by every batch in flight) -> fuse (one Redis round trip per user depth) -> decide -> emit. Nothing
  is split into per-event tasks or futures; a batch is awaited once per step.
- Offsets travel with the batch. Every value past decoding carries its `SourceRecord` (topic,
  partition, offset), and `Pipeline.process` returns one `Outcome` per record, in the records'
  order, only once its decision or dead letter is acknowledged by the sink. The driver
  (stream/runners/driver.py) releases finished records in offset order per partition; nothing else
  commits.
- Backpressure is explicit. The driver holds at most `max_in_flight` events; a full driver refuses
  (its `submit` waits, so the consumer stops taking input), and a paused one (invalid share) takes
  nothing until resumed. Steps never buffer without bound: the micro-batcher holds only what the
  batches in flight gave it, and the belief step is taken one batch at a time, in admission order,
  so one user's events are fused in partition order across batches.

Ports are Protocols: the adapters (Kafka sink, Redis belief store, the inference engine) satisfy
them structurally and are wired in only by `assemble`; unit tests use in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from model.engine import DecodedBatch, EncodedFrame, FrameResult

if TYPE_CHECKING:
    from stream.core.belief import Belief, ClockSkewRule, Evidence
    from stream.core.belief_updates import ApplyResult, SurfaceKey
    from stream.core.policy import Action

Clock = Callable[[], float]
"""Seconds since the epoch (time.time in production; a fixed `as_of` in a replay)."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One consumed message, transport-neutral."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    # The message's headers; read only to carry a redriven copy's lineage into its dead letter.
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def idempotency_key(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def record_headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Kafka clients' headers (a list of (name, value) pairs or a mapping; values bytes, str or None)
    as `SourceRecord.headers`."""
    if not raw:
        return ()
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(k), v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "decision" or "dead_letter"
    action: str | None = None  # for decisions
    reason: str | None = None  # for dead letters
    decision: dict[str, Any] | None = None


class Sink(Protocol):
    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        """Resolves once Kafka has acknowledged the message."""

    async def send_all(
        self, messages: Sequence[tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
    ) -> None:
        """Produce a batch of (topic, key, value, headers), awaited once: resolves when Kafka has
        acknowledged every one; raises the first failure after all have settled."""


class FrameModel(Protocol):
    """A blocking model: the inference engine, or replay's fixed-shape wrapper around it."""

    @property
    def model_version(self) -> str: ...

    @property
    def error_floor_years(self) -> float: ...

    @property
    def floor_ratio(self) -> float: ...

    def score(self, frames: Sequence[EncodedFrame]) -> list[FrameResult]: ...

    def decode(self, frames: Sequence[EncodedFrame]) -> DecodedBatch:
        """The first half of `score`: what `score_decoded` takes (the micro-batcher runs them apart)."""

    def score_decoded(self, batch: DecodedBatch) -> list[FrameResult]: ...


class Scorer(Protocol):
    """Scores frames off the event loop, sharing micro-batches with every other caller."""

    async def score_many(self, frames: Sequence[EncodedFrame]) -> list[FrameResult]:
        """One result per frame, in order; awaited once for all of them."""


class BeliefRepository(Protocol):
    """The belief store as the pipeline uses it (stream/adapters/belief_store.py `BeliefStore` in production,
    an in-memory store in unit tests). Redis faults raise DependencyUnavailable."""

    half_life_s: float
    skew: ClockSkewRule

    async def apply(
        self, updates: Mapping[str, Sequence[Evidence]], *, now: float, model_version: str, floor: float
    ) -> ApplyResult: ...

    async def apply_verified(
        self, user_id: str, *, event_id: str, verified_age: float, verified_at: float, now: float
    ) -> Belief: ...

    async def record_actions(self, actions: Mapping[SurfaceKey, Action]) -> None: ...

    async def get_many(self, user_ids: Sequence[str], *, now: float) -> dict[str, Belief | None]: ...

    async def get_previous_actions(self, keys: Sequence[SurfaceKey]) -> dict[SurfaceKey, Action | None]: ...


class Decoded(Protocol):
    @property
    def subject(self) -> str: ...

    @property
    def record(self) -> dict[str, Any]: ...


class Codec(Protocol):
    """The wire format (stream/adapters/codec.py `AvroCodec`): raises DecodeError on bad input."""

    def decode(self, data: bytes | None, expected: Any = None) -> Decoded: ...

    def encode(self, subject: str, record: Mapping[str, Any]) -> bytes: ...
