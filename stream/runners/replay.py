"""`agegate replay`: the worker's pipeline over a historical window, for backfills and what-ifs.

Why it is built the way it is:
- The window is resolved once, per partition (`offsets_for_times`, watermarks), and stored in the
  state file, so a resumed or repeated run reads exactly the same messages even as the topics grow.
- The consumer is `assign`ed, never subscribed: it never joins (or rebalances) the worker's group
  and never commits offsets anywhere; progress lives in the state file.
- Determinism. Three things vary between runs of a live worker and are pinned here:
  1. order: partitions are merged into one sequence by (timestamp, topic, partition, offset), so
     one user's events across topics reach the pipeline in the same order every time;
  2. time: the belief clock is the window's end (`as_of`); an event counts as processed at its
     Kafka record timestamp (when the live worker saw it, to within its lag), capped at `as_of`;
  3. arithmetic: CPU kernels pick their path by shape and memory layout, so a frame's estimate
     could differ in its last bits with how full its micro-batch was (a full batch is a
     channels_last view, a padded one plain NCHW). Every forward pass has one padded shape and one
     layout (`FixedShapeScorer`, `model.engine.fixed_shape`): batch fill, checkpoint interval,
     `--rate` and the resume point change no bit.
  Output lines are written in the merged order, so the same window, model, policy and settings give
  a byte-identical file. The state file pins every setting that changes output
  (stream/runners/replay_pins.py) and a resume that differs in any is refused.
- Isolation: beliefs live under `<redis_key_prefix>-replay-<run id>`; the sink routes decisions only
  to the replay's output, never to production topics. The namespace is dropped at the end unless
  `--keep-state`.
- Bounded memory: at most `--buffer` prefetched messages per partition and `--max-in-flight` events
  in the pipeline, whatever the window's size; the diff joins through SQLite on disk.
- Resumable: every `--checkpoint-every` events the pipeline is drained and the state file records
  each partition's next offset and the output's length. Belief writes after a checkpoint are undone
  on resume through an undo journal (stream/adapters/journaled_store.py), so a resumed run's output equals an
  uninterrupted one's.
- Scale: one process consumes all of its partitions with one consumer, and events of different
  users are in flight concurrently, sharing micro-batches; it scales with partitions until the
  model saturates the process's cores or GPU. Beyond that, run N processes with `--shard i/N`
  (partitions p with p % N == i, one state and output file each) on as many machines. Residues,
  not contiguous ranges: with N dividing every topic's partition count a user's signups, uploads
  and feedback (same key, partitions hash % 12 and hash % 6) land in the same shard, which a range
  split of 12 and 6 partitions would not guarantee. Shard outputs concatenate; the diff joins by key.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from model.engine import (
    DecodedBatch,
    EncodedFrame,
    FrameResult,
    InferenceEngine,
    fixed_shape,
    frame_results,
)
from stream.adapters.journaled_store import JournaledBeliefStore
from stream.adapters.kafka_sink import KafkaSink
from stream.adapters.topics import topic_names
from stream.config import Settings, load_settings
from stream.core.policy import Policy, default_policy_path, load_policy
from stream.errors import AgegateError
from stream.log import get_logger
from stream.pipeline.assemble import DAY_S, Assembled, assemble, checkpoint_file, load_engine, redis_client
from stream.pipeline.ports import Outcome, SourceRecord, record_headers
from stream.runners.driver import Done, Driver
from stream.runners.interpreter import run_async
from stream.runners.preflight import probe_redis
from stream.runners.replay_pins import differences, output_settings

log = get_logger("agegate.replay")

STATE_VERSION = 2  # 2: `pinned` output settings
SOURCE_ROLES = ("signups", "uploads", "feedback")


class ReplayError(AgegateError):
    """The replay cannot start or continue as asked (bad window, mismatched state file...)."""


# --- window ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of the window: a time (ms), per-partition offsets, or earliest/latest."""

    kind: str  # "time" | "offsets" | "earliest" | "latest"
    time_ms: int = 0
    offsets: tuple[tuple[str | None, int, int], ...] = ()  # (topic or None for all, partition, offset)

    def offset_for(self, topic: str, role: str | None, partition: int) -> int | None:
        for t, p, o in self.offsets:
            if p == partition and t in (None, topic, role):
                return o
        return None


def parse_bound(text: str) -> Bound:
    """earliest | latest | ISO-8601 time | @epoch-ms | P=O[,P=O] or ROLE/P=O[,...]."""
    s = text.strip()
    if s in ("earliest", "latest"):
        return Bound(s)
    if s.startswith("@"):
        return Bound("time", time_ms=int(s[1:]))
    if "=" in s:
        offsets = []
        for part in s.split(","):
            lhs, _, rhs = part.strip().partition("=")
            topic, _, p = lhs.rpartition("/")
            try:
                offsets.append((topic or None, int(p), int(rhs)))
            except ValueError:
                raise ReplayError(f"bad offsets bound {part!r}: expected P=OFFSET or TOPIC/P=OFFSET") from None
        return Bound("offsets", offsets=tuple(offsets))
    try:
        when = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(
            f"bad bound {text!r}: use an ISO-8601 time, @epoch-ms, earliest, latest or P=OFFSET,..."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Bound("time", time_ms=int(when.timestamp() * 1000))


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    i, _, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        raise ReplayError(f"bad --shard {text!r}: expected I/N, e.g. 0/3") from None
    if not 0 <= shard[0] < shard[1]:
        raise ReplayError(f"bad --shard {text!r}: need 0 <= I < N")
    return shard


@dataclass(frozen=True, slots=True)
class PartitionWindow:
    topic: str
    partition: int
    start: int
    end: int  # exclusive

    @property
    def tp(self) -> str:
        return f"{self.topic}/{self.partition}"


def resolve_window(
    consumer: Consumer,
    topics: Sequence[tuple[str, str]],
    frm: Bound,
    to: Bound,
    *,
    shard: tuple[int, int] = (0, 1),
    timeout_s: float = 30.0,
) -> list[PartitionWindow]:
    """Per-partition [start, end) for `topics` ((role, name) pairs), clamped to what exists now."""
    meta = consumer.list_topics(timeout=timeout_s)
    windows: list[PartitionWindow] = []
    for role, name in topics:
        tmeta = meta.topics.get(name)
        if tmeta is None or tmeta.error is not None:
            raise ReplayError(f"topic {name} does not exist")
        count = len(tmeta.partitions)
        if count % shard[1]:
            raise ReplayError(
                f"--shard {shard[0]}/{shard[1]}: {name} has {count} partitions, not a multiple of {shard[1]}; "
                "a user's events could land in different shards"
            )
        parts = [p for p in sorted(tmeta.partitions) if p % shard[1] == shard[0]]

        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s, cached=False)
            start = _bound_offset(consumer, frm, role, name, p, low, high, low, timeout_s)
            end = _bound_offset(consumer, to, role, name, p, low, high, high, timeout_s)
            windows.append(PartitionWindow(name, p, start, max(start, end)))
    return windows


def _bound_offset(
    consumer: Consumer, bound: Bound, role: str, name: str, p: int, low: int, high: int, default: int, timeout_s: float
) -> int:
    if bound.kind == "earliest":
        return low
    if bound.kind == "latest":
        return high
    if bound.kind == "offsets":
        o = bound.offset_for(name, role, p)
        return default if o is None else max(low, min(high, o))
    found = consumer.offsets_for_times([TopicPartition(name, p, bound.time_ms)], timeout=timeout_s)[0]
    if found.error is not None:
        raise ReplayError(f"offsets_for_times failed for {name}/{p}: {found.error}")
    return high if found.offset < 0 else max(low, min(high, found.offset))


def message_record(m: Message) -> SourceRecord:
    """confluent-kafka types every field Optional; a consumed, error-free message has them all."""
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    if topic is None or partition is None or offset is None:
        raise ReplayError(f"message without a position: {m.error()}")
    key, value = m.key(), m.value()
    return SourceRecord(
        topic,
        partition,
        offset,
        key if isinstance(key, bytes) else None,
        value if isinstance(value, bytes) else None,
        m.timestamp()[1],
        record_headers(m.headers()),
    )


def _processed_at(rec: SourceRecord, as_of: float) -> float:
    """When the live worker would have processed `rec`: its record timestamp, never after the window."""
    return min(rec.timestamp_ms / 1000.0, as_of) if rec.timestamp_ms > 0 else as_of


def window_as_of(consumer: Consumer, windows: Sequence[PartitionWindow], timeout_s: float = 30.0) -> float:
    """The latest timestamp inside the window: the replay's fixed "now" (see the module doc)."""
    todo = [w for w in windows if w.end > w.start]
    if not todo:
        return 0.0
    consumer.assign([TopicPartition(w.topic, w.partition, w.end - 1) for w in todo])
    want = {(w.topic, w.partition): w.end - 1 for w in todo}
    latest = 0
    deadline = time.monotonic() + timeout_s
    while want and time.monotonic() < deadline:
        for m in consumer.consume(len(want), 1.0):
            if m.error() is not None:
                continue
            rec = message_record(m)
            key = (rec.topic, rec.partition)
            if key in want and rec.offset >= want[key]:
                latest = max(latest, rec.timestamp_ms)
                want.pop(key)
                consumer.pause([TopicPartition(*key)])
        if want:  # the last offset may be a transaction marker: settle for what the position says
            positions = consumer.position([TopicPartition(t, p) for t, p in want])
            for tp in positions:
                k = (str(tp.topic), int(tp.partition or 0))
                if (tp.offset or 0) >= want[k] + 1:
                    want.pop(k, None)
    consumer.unassign()
    return latest / 1000.0


# --- ordered reading ------------------------------------------------------------------------------


def order_key(rec: SourceRecord) -> tuple[int, str, int, int]:
    return (rec.timestamp_ms, rec.topic, rec.partition, rec.offset)


class MergedReader:
    """Yields the window's records merged across partitions in `order_key` order, with bounded buffers.

    A record is released only when every unfinished partition has a buffered head to compare with,
    so the sequence does not depend on how the broker interleaves fetches. Full buffers pause their
    partition (memory bound); an empty one is never paused, so the merge always makes progress.
    """

    def __init__(
        self, consumer: Consumer, windows: Sequence[PartitionWindow], positions: dict[str, int], *, buffer: int = 256
    ) -> None:
        self.consumer = consumer
        self.cap = buffer
        self.windows = {(w.topic, w.partition): w for w in windows}
        self.next_fetch = {k: positions.get(w.tp, w.start) for k, w in self.windows.items()}
        self.buffers: dict[tuple[str, int], deque[SourceRecord]] = {k: deque() for k in self.windows}
        self.paused: set[tuple[str, int]] = set()
        live = [
            TopicPartition(t, p, self.next_fetch[(t, p)])
            for (t, p), w in self.windows.items()
            if self.next_fetch[(t, p)] < w.end
        ]
        if live:
            consumer.assign(live)

    def _exhausted(self, k: tuple[str, int]) -> bool:
        return self.next_fetch[k] >= self.windows[k].end

    async def next(self) -> SourceRecord | None:
        while True:
            active = [k for k in self.windows if self.buffers[k] or not self._exhausted(k)]
            if not active:
                return None
            if all(self.buffers[k] for k in active):
                k = min(active, key=lambda k: order_key(self.buffers[k][0]))
                rec = self.buffers[k].popleft()
                if k in self.paused and not self._exhausted(k) and len(self.buffers[k]) <= self.cap // 2:
                    self.consumer.resume([TopicPartition(*k)])
                    self.paused.discard(k)
                return rec
            await self._fill([k for k in active if not self.buffers[k]])

    async def _fill(self, starving: list[tuple[str, int]]) -> None:
        msgs = await asyncio.to_thread(self.consumer.consume, 500, 1.0)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise ReplayError(f"consuming the window failed: {err}")
            rec = message_record(m)
            k = (rec.topic, rec.partition)
            if k not in self.windows or self._exhausted(k) or rec.offset < self.next_fetch[k]:
                continue
            self.buffers[k].append(rec)
            self.next_fetch[k] = rec.offset + 1
        if not msgs:
            # Offsets can be skipped (transaction markers, compaction): trust the consumer's position.
            for tp in self.consumer.position([TopicPartition(*k) for k in starving]):
                k = (str(tp.topic), int(tp.partition or 0))
                if tp.offset is not None and tp.offset >= 0:
                    self.next_fetch[k] = max(self.next_fetch[k], min(tp.offset, self.windows[k].end))
        to_pause = [
            k for k in self.windows if k not in self.paused and (self._exhausted(k) or len(self.buffers[k]) >= self.cap)
        ]
        if to_pause:
            self.consumer.pause([TopicPartition(*k) for k in to_pause])
            self.paused.update(to_pause)


# --- scoring --------------------------------------------------------------------------------------


class FixedShapeScorer:
    """Scores every micro-batch as a forward pass of exactly `size` rows (zero-padded).

    On CPU a frame's estimate depends, in its last bits, on the batch size its pass had; padding to
    one shape makes each frame's result independent of which other frames shared its batch.
    """

    def __init__(self, engine: InferenceEngine, size: int) -> None:
        self.engine = engine
        self.size = size
        self.model_version = engine.model_version
        self.error_floor_years = engine.error_floor_years
        self.floor_ratio = engine.floor_ratio

    def score(self, frames: Sequence[EncodedFrame]) -> list[FrameResult]:
        out: list[FrameResult] = []
        for i in range(0, len(frames), self.size):
            out.extend(self.score_decoded(self.decode(frames[i : i + self.size])))
        return out

    def decode(self, frames: Sequence[EncodedFrame]) -> DecodedBatch:
        if len(frames) > self.size:
            raise ValueError(f"{len(frames)} frames do not fit a fixed shape of {self.size}")
        return self.engine.decode(frames)

    def score_decoded(self, batch: DecodedBatch) -> list[FrameResult]:
        pixels = fixed_shape(batch.pixels, self.size) if batch.indices else batch.pixels  # none decoded: no pass
        return frame_results(batch, self.engine.infer(pixels))


# --- output ---------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def outcome_line(rec: SourceRecord, outcome: Outcome) -> bytes:
    """One output line; sorted keys and fixed separators so equal outcomes give equal bytes."""
    if outcome.kind == "decision":
        body: dict[str, Any] = {
            "kind": "decision",
            "idempotency_key": rec.idempotency_key,
            "decision": outcome.decision,
        }
    else:
        body = {"kind": "dead_letter", "idempotency_key": rec.idempotency_key, "reason": outcome.reason, "key": rec.key}
    return (json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default) + "\n").encode()


class FileOutput:
    def __init__(self, path: Path, *, truncate_to: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - held for the run
        self._f.truncate(truncate_to)  # lines written after the last checkpoint are redone
        self._f.seek(truncate_to)

    def write(self, line: bytes) -> None:
        self._f.write(line)

    def durable_size(self) -> int:
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


class ReplaySink:
    """The pipeline's sink during a replay: decisions go to the output topic, if any; nothing else
    leaves the process (dead letters are lines of the output file or counted), so a replay can never
    write to production topics."""

    def __init__(self, decisions_topic: str, out_topic: str | None, kafka: KafkaSink | None) -> None:
        self.decisions_topic = decisions_topic
        self.out_topic = out_topic
        self.kafka = kafka
        self._n = 0

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        if topic == self.decisions_topic and self.kafka is not None and self.out_topic is not None:
            return await self.kafka.send(self.out_topic, key, value, headers)
        self._n += 1
        return (0, self._n)

    async def send_all(
        self, messages: Sequence[tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
    ) -> None:
        kept = [m for m in messages if m[0] == self.decisions_topic]
        self._n += len(messages) - len(kept)
        if self.kafka is not None and self.out_topic is not None:
            await self.kafka.send_all([(self.out_topic, key, value, headers) for _, key, value, headers in kept])
        else:
            self._n += len(kept)


# --- state ----------------------------------------------------------------------------------------


@dataclass
class ReplayState:
    run_id: str
    windows: list[PartitionWindow]
    as_of: float
    model_version: str
    policy_version: str
    out: str
    positions: dict[str, int] = field(default_factory=dict)
    out_bytes: int = 0
    generation: int = 0
    done: bool = False
    events: int = 0
    decisions: int = 0
    dead_letters: int = 0
    pinned: dict[str, Any] = field(default_factory=dict)  # stream/runners/replay_pins.py

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        raw["version"] = STATE_VERSION
        return json.dumps(raw, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReplayState:
        raw = json.loads(text)
        if raw.pop("version", None) != STATE_VERSION:
            raise ReplayError("state file has an unknown format version; start a new replay")
        raw["windows"] = [PartitionWindow(**w) for w in raw["windows"]]
        return cls(**raw)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remaining(self) -> int:
        return sum(max(0, w.end - self.positions.get(w.tp, w.start)) for w in self.windows)


class RateLimiter:
    """Caps dispatch at `rate` events/s (0: unlimited) so a backfill leaves room for live traffic."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = 0.0

    def delay(self) -> float:
        """Seconds to wait before the next event may go (and reserve its slot)."""
        if not self.interval:
            return 0.0
        now = self._clock()
        at = max(now, self._next)
        self._next = at + self.interval
        return at - now


# --- the run --------------------------------------------------------------------------------------


@dataclass
class ReplayConfig:
    settings: Settings
    frm: Bound
    to: Bound
    out: str  # file:PATH | topic:NAME
    state_path: Path
    model: str = ""
    policy: str = ""
    roles: Sequence[str] = SOURCE_ROLES
    diff_against: str | None = None
    rate: float = 0.0
    shard: tuple[int, int] = (0, 1)
    checkpoint_every: int = 1000
    max_in_flight: int = 256
    buffer: int = 256
    progress: bool = True
    keep_state: bool = False
    fail_after: int = 0  # testing crash recovery: drain, then die without a checkpoint


@dataclass(frozen=True)
class ReplaySummary:
    events: int
    decisions: int
    dead_letters: int
    elapsed_s: float
    out: str
    diff: dict[str, Any] | None = None
    events_this_run: int = 0  # a resumed run processed only the rest of the window

    @property
    def rate(self) -> float:
        """Events per second of this run: what it processed over its own time (not the whole window's
        events over a resumed part's time)."""
        return self.events_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _out_spec(out: str) -> tuple[str, str]:
    kind, _, target = out.partition(":")
    if kind not in ("file", "topic") or not target:
        raise ReplayError(f"bad --out {out!r}: use file:PATH.jsonl or topic:NAME")
    return kind, target


def _consumer(settings: Settings, run_id: str) -> Consumer:
    # group.id is required by librdkafka but unused: partitions are assigned, nothing is committed.
    return Consumer(
        settings.kafka_client_config()
        | {
            "group.id": f"agegate-replay-{run_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.max.bytes": 16 * 1024 * 1024,
        }
    )


def _pins(cfg: ReplayConfig, engine: InferenceEngine, policy: Policy) -> dict[str, Any]:
    model = cfg.model or cfg.settings.model_checkpoint
    return output_settings(
        cfg.settings,
        model_file=checkpoint_file(model) if model else None,
        policy_file=Path(cfg.policy or cfg.settings.policy_file or default_policy_path()),
        model_version=engine.model_version,
        policy_version=policy.version,
        device=str(engine.device.type),
        out=cfg.out,
    )


def _open_state(cfg: ReplayConfig, engine: InferenceEngine, policy: Policy) -> tuple[ReplayState, bool]:
    """The run's state: resumed from the state file (which must pin the same output settings), or a
    new run whose window is resolved now and saved before anything is read."""
    pins = _pins(cfg, engine, policy)
    if cfg.state_path.exists():
        state = ReplayState.from_json(cfg.state_path.read_text())
        if diffs := differences(state.pinned, pins):
            raise ReplayError(
                f"state file {cfg.state_path} was written with other output-changing settings ("
                + "; ".join(diffs)
                + "): resume with the original ones, or start a new replay (another --out)"
            )
        return state, True
    names = topic_names(cfg.settings)
    sources = [(r, names.get(r, r)) for r in cfg.roles]
    run_id = uuid.uuid4().hex[:12]
    consumer = _consumer(cfg.settings, run_id)
    try:
        windows = resolve_window(consumer, sources, cfg.frm, cfg.to, shard=cfg.shard)
        as_of = window_as_of(consumer, windows)
    finally:
        consumer.close()
    state = ReplayState(run_id, windows, as_of, engine.model_version, policy.version, cfg.out, pinned=pins)
    state.save(cfg.state_path)
    return state, False


class _Run:
    """One replay run over an open state: the pipeline, its driver, the output, checkpoints."""

    def __init__(self, cfg: ReplayConfig, state: ReplayState, engine: InferenceEngine, policy: Policy) -> None:
        settings = cfg.settings
        self.cfg = cfg
        self.state = state
        kind, target = _out_spec(cfg.out)
        self.redis = redis_client(settings)
        self.store = JournaledBeliefStore(
            self.redis,
            prefix=f"{settings.redis_key_prefix}-replay-{state.run_id}",
            half_life_s=settings.belief_half_life_days * DAY_S,
            ttl_s=settings.belief_ttl_days * DAY_S,
            generation=state.generation,
        )
        self.kafka = KafkaSink(settings) if kind == "topic" else None
        self.output = FileOutput(Path(target), truncate_to=state.out_bytes) if kind == "file" else None
        sink = ReplaySink(topic_names(settings)["decisions"], target if kind == "topic" else None, self.kafka)
        as_of = state.as_of
        self.assembled: Assembled = assemble(
            settings,
            model=FixedShapeScorer(engine, settings.batch_max_frames),
            store=self.store,
            sink=sink,
            policy=policy,
            max_in_flight=cfg.max_in_flight,
            clock=lambda: as_of,
            processed_at=lambda rec: _processed_at(rec, as_of),
            stop_on_invalid_share=False,
        )
        self.driver: Driver[None] = Driver(
            self.assembled.pipeline.process,
            max_in_flight=cfg.max_in_flight,
            max_in_flight_bytes=self.assembled.max_in_flight_bytes,
            release=self._release,
        )
        self.bar = _progress(cfg.progress, state)

    async def _release(self, done: Sequence[Done[None]]) -> None:
        """Finished events, in the merged order: their output lines, positions and counts."""
        state = self.state
        for item in done:
            rec, outcome = item.record, item.outcome
            if self.output is not None:
                self.output.write(outcome_line(rec, outcome))
            state.positions[f"{rec.topic}/{rec.partition}"] = rec.offset + 1
            state.events += 1
            if outcome.kind == "decision":
                state.decisions += 1
            else:
                state.dead_letters += 1
        if self.bar is not None:
            self.bar.update(len(done))

    async def checkpoint(self, done: bool = False) -> None:
        await self.driver.drain()
        state = self.state
        state.out_bytes = self.output.durable_size() if self.output is not None else 0
        if self.kafka is not None:
            self.kafka.flush(30.0)
        state.generation += 1
        state.done = done
        state.save(self.cfg.state_path)
        await self.store.commit(state.generation)

    async def run(self) -> None:
        """Read the window in merged order, in batches that never cross a checkpoint."""
        cfg = self.cfg
        consumer = _consumer(cfg.settings, self.state.run_id)
        reader = MergedReader(consumer, self.state.windows, self.state.positions, buffer=cfg.buffer)
        limiter = RateLimiter(cfg.rate)
        size = self.assembled.batch_events
        processed = 0
        batch: list[tuple[SourceRecord, None]] = []
        self.assembled.start()
        self.driver.start()
        try:
            while (rec := await reader.next()) is not None:
                wait = limiter.delay()
                if wait > 0:
                    await asyncio.sleep(wait)
                batch.append((rec, None))
                processed += 1
                crash = bool(cfg.fail_after) and processed >= cfg.fail_after
                due = processed % cfg.checkpoint_every == 0
                if len(batch) >= size or crash or due:
                    await self.driver.submit(batch)
                    batch = []
                if crash:
                    await self._crash()
                if due:
                    await self.checkpoint()
            await self.driver.submit(batch)
            await self.checkpoint(done=True)
        finally:
            consumer.close()

    async def _crash(self) -> None:
        """Testing crash recovery: a crash after the last checkpoint, with writes past it."""
        await self.driver.drain()
        if self.output is not None:
            self.output.durable_size()
        os._exit(137)

    async def close(self) -> None:
        await self.driver.stop()
        if self.bar is not None:
            self.bar.close()
        await self.assembled.stop()
        if self.output is not None:
            self.output.close()
        if self.kafka is not None:
            self.kafka.close()


async def replay(cfg: ReplayConfig, *, engine: InferenceEngine | None = None) -> ReplaySummary:
    started = time.monotonic()
    owned = engine is None  # loaded here: closed here (its decode processes, if any)
    engine = engine or load_engine(cfg.settings, cfg.model or None)
    try:
        return await _replay(cfg, engine, started)
    finally:
        if owned:
            engine.close()


async def _replay(cfg: ReplayConfig, engine: InferenceEngine, started: float) -> ReplaySummary:
    policy = load_policy(cfg.policy or cfg.settings.policy_file or None)
    state, resumed = _open_state(cfg, engine, policy)
    if state.done:
        log.info("replay already complete", state=str(cfg.state_path))
        return ReplaySummary(state.events, state.decisions, state.dead_letters, 0.0, state.out, _maybe_diff(cfg, state))
    events_before = state.events
    run = _Run(cfg, state, engine, policy)
    if resumed:
        undone = await run.store.rollback()
        log.info("resuming replay", run_id=state.run_id, remaining=state.remaining(), users_rolled_back=undone)
    try:
        await run.run()
    finally:
        await run.close()
    if not cfg.keep_state:
        await run.store.drop_namespace()
    await run.redis.aclose()
    return ReplaySummary(
        state.events,
        state.decisions,
        state.dead_letters,
        time.monotonic() - started,
        state.out,
        _maybe_diff(cfg, state),
        events_this_run=state.events - events_before,
    )


def _progress(enabled: bool, state: ReplayState) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=state.remaining() + state.events,
        initial=state.events,
        unit="ev",
        desc="replay",
        smoothing=0.1,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _maybe_diff(cfg: ReplayConfig, state: ReplayState) -> dict[str, Any] | None:
    if not cfg.diff_against:
        return None
    from stream.runners import diff

    kind, target = _out_spec(state.out)
    names = topic_names(cfg.settings)
    # file:PATH: a baseline replay's output (the rollout comparison); otherwise recorded decisions.
    baseline = cfg.diff_against.removeprefix("file:") if cfg.diff_against.startswith("file:") else None
    base = Path(target) if kind == "file" else cfg.state_path
    join = diff.DecisionJoin(base.with_name(base.name + ".diff.sqlite"), against="baseline" if baseline else "recorded")
    try:
        in_window = diff.window_filter(state.windows)
        if kind == "file":
            join.add_replayed(diff.decisions_from_jsonl(Path(target)))
        else:
            join.add_replayed(d for d in diff.read_decision_topic(cfg.settings, target) if in_window(d))
        if baseline is not None:
            if not Path(baseline).is_file():
                raise ReplayError(f"--diff-against {cfg.diff_against}: no such baseline file")
            join.add_recorded(d for d in diff.decisions_from_jsonl(Path(baseline)) if in_window(d))
        else:
            recorded_topic = names.get(cfg.diff_against, cfg.diff_against)
            join.add_recorded(d for d in diff.read_decision_topic(cfg.settings, recorded_topic) if in_window(d))
        report = join.report()
    finally:
        join.close()
    base.with_name(base.name + ".diff.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    table = diff.render_table(report)
    base.with_name(base.name + ".diff.txt").write_text(table)
    print(table)
    return report


# --- CLI ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="frm",
        required=True,
        help="window start: ISO time, @epoch-ms, earliest, or P=OFFSET[,...] / ROLE/P=OFFSET",
    )
    parser.add_argument("--to", default="latest", help="window end (exclusive), same forms; default latest")
    parser.add_argument("--topics", default=",".join(SOURCE_ROLES), help="roles or topic names, comma separated")
    parser.add_argument("--model", default="", help="checkpoint (default: AGEGATE_MODEL)")
    parser.add_argument("--policy", default="", help="policy TOML (default: AGEGATE_POLICY or the packaged one)")
    parser.add_argument("--out", required=True, help="file:PATH.jsonl or topic:NAME")
    parser.add_argument(
        "--diff-against",
        default=None,
        help="file:BASELINE.jsonl (a baseline replay of the same window: the rollout comparison), "
        "or recorded decisions: a role (decisions) or topic",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="events/s cap (0: unlimited)")
    parser.add_argument(
        "--resume",
        "--state",
        dest="state",
        default=None,
        help="state file: created on the first run, resumed from afterwards",
    )
    parser.add_argument("--shard", default=None, help="I/N: only partitions p with p %% N == I")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="events between checkpoints")
    parser.add_argument("--max-in-flight", type=int, default=0, help="events in the pipeline (0: queue_max_events)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-state", action="store_true", help="keep the replay's Redis namespace afterwards")
    parser.add_argument("--fail-after", type=int, default=0, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace, settings: Settings | None = None) -> ReplayConfig:
    settings = settings or load_settings()
    kind, target = _out_spec(args.out)
    state = Path(args.state) if args.state else Path((target if kind == "file" else f"replay-{target}") + ".state.json")
    return ReplayConfig(
        settings=settings,
        frm=parse_bound(args.frm),
        to=parse_bound(args.to),
        out=args.out,
        state_path=state,
        model=args.model,
        policy=args.policy,
        roles=[r.strip() for r in args.topics.split(",") if r.strip()],
        diff_against=args.diff_against,
        rate=args.rate,
        shard=parse_shard(args.shard),
        checkpoint_every=max(1, args.checkpoint_every),
        max_in_flight=args.max_in_flight or settings.queue_max_events,
        progress=not args.no_progress,
        keep_state=args.keep_state,
        fail_after=args.fail_after,
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    probe_redis(settings)  # Redis unreachable: one line and exit code 3 (stream/cli.py), not retries
    try:
        cfg = config_from_args(args, settings)
        summary = run_async(replay(cfg), settings)
    except AgegateError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "events": summary.events,
                "decisions": summary.decisions,
                "dead_letters": summary.dead_letters,
                "events_this_run": summary.events_this_run,
                "elapsed_s": round(summary.elapsed_s, 3),
                "events_per_s": round(summary.rate, 1),
                "out": summary.out,
            },
            sort_keys=True,
        )
    )
    return 0
