"""The one driver: feeds batches to the pipeline, bounded in flight, and releases what is done in order.

Used by the worker (faust hands it batches), replay and the benchmarks (a confluent-kafka reader),
and the tests. Its guarantees, whoever drives it:
- bounded in flight: `submit` waits while `max_in_flight` events, or `max_in_flight_bytes` of their
  records' values, are unreleased (backpressure: the caller stops taking input), and refuses while
  the driver is paused (input closed). The event bound keeps the stages fed; the byte bound keeps
  memory bounded whatever the frames weigh;
- completion in order: batches are released in the order they were submitted, so each partition's
  records are released in offset order (every source hands a partition's records in offset order);
- commit only what is done: a record is released (acked, written, checkpointed) only once its
  outcome is acknowledged and every record submitted before it was released. A partition forgotten
  since (revoked) releases nothing more: its new owner processes those records again.

One task per batch (the pipeline's), plus one completer task; nothing per event.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from stream.pipeline.ports import Outcome, SourceRecord
from stream.runners.offsets import OffsetTracker

T = TypeVar("T")

Process = Callable[[Sequence[SourceRecord]], Awaitable[Sequence[Outcome]]]


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """A released record: what came in, what the caller attached (e.g. faust's event), the outcome."""

    record: SourceRecord
    payload: T
    outcome: Outcome


@dataclass(slots=True)
class _Slot(Generic[T]):
    record: SourceRecord
    payload: T
    generation: int
    outcome: Outcome | None = None


class Driver(Generic[T]):
    def __init__(
        self,
        process: Process,
        *,
        max_in_flight: int,
        release: Callable[[Sequence[Done[T]]], Awaitable[None]],
        on_error: Callable[[BaseException], None] | None = None,
        max_in_flight_bytes: int | None = None,
    ) -> None:
        """`release` gets each completed batch's still-owned records, in order; `on_error` is told
        when a batch fails (a bug: nothing of it or after it is released). Without `on_error` the
        failure is raised from the next `submit` or `drain`. `max_in_flight_bytes` None: no byte bound."""
        self._process = process
        self.max_in_flight = max(1, max_in_flight)
        self.max_in_flight_bytes = max_in_flight_bytes
        self._release = release
        self._on_error = on_error
        self._tracker: OffsetTracker[_Slot[T]] = OffsetTracker()
        self._generation: dict[tuple[str, int], int] = {}
        # Each batch in flight: its slots, its byte size (what it holds of the byte bound), its task.
        self._batches: deque[tuple[list[_Slot[T]], int, asyncio.Task[Sequence[Outcome]]]] = deque()
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._changed = asyncio.Condition()
        self._open = asyncio.Event()
        self._open.set()
        self._error: BaseException | None = None
        self._completer: asyncio.Task[None] | None = None

    # --- state ------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Events submitted and not yet released."""
        return self._in_flight

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of the records' values submitted and not yet released."""
        return self._in_flight_bytes

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def pause(self) -> None:
        """Close the input: `submit` refuses until `resume` (what is in flight still finishes)."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def forget(self, topic: str, partition: int) -> None:
        """A revoked partition: its records in flight finish but are not released."""
        key = (topic, partition)
        self._generation[key] = self._generation.get(key, 0) + 1
        self._tracker.forget(topic, partition)

    def committable(self, topic: str, partition: int) -> int | None:
        """The next offset to consume for a partition once everything released is committed."""
        return self._tracker.committable(topic, partition)

    # --- feeding ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._completer is None:
            self._completer = asyncio.get_running_loop().create_task(self._complete(), name="driver-completer")

    async def submit(self, batch: Sequence[tuple[SourceRecord, T]]) -> bool:
        """Hand a batch to the pipeline once there is room; False (nothing taken) when the input is or
        becomes paused meanwhile. A batch larger than either bound waits until nothing is in flight."""
        self._raise_error()
        if not batch:
            return True
        n = len(batch)
        size = sum(len(rec.value or b"") for rec, _ in batch)
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.paused or self._error is not None or self._in_flight == 0 or self._has_room(n, size)
            )
            self._raise_error()
            if self.paused:
                return False
            self._in_flight += n
            self._in_flight_bytes += size
        slots = []
        for rec, payload in batch:
            generation = self._generation.get((rec.topic, rec.partition), 0)
            slot = _Slot(rec, payload, generation)
            self._tracker.start(rec.topic, rec.partition, rec.offset, slot)
            slots.append(slot)
        # `process` is called here, in submission order (the pipeline takes the batch's place in its
        # belief step's order synchronously); the task only awaits it.
        task = asyncio.get_running_loop().create_task(_awaited(self._process([rec for rec, _ in batch])))
        self._batches.append((slots, size, task))
        async with self._changed:
            self._changed.notify_all()
        return True

    def _has_room(self, events: int, size: int) -> bool:
        if self._in_flight + events > self.max_in_flight:
            return False
        return self.max_in_flight_bytes is None or self._in_flight_bytes + size <= self.max_in_flight_bytes

    async def drain(self) -> None:
        """Wait until everything submitted is released."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight == 0 or self._error is not None)
        self._raise_error()

    async def stop(self) -> None:
        """Release what is in flight, then stop the completer."""
        if self._error is None:
            await self.drain()
        if self._completer is not None:
            self._completer.cancel()
            await asyncio.gather(self._completer, return_exceptions=True)
            self._completer = None
        for _, _, task in self._batches:
            task.cancel()

    def _raise_error(self) -> None:
        if self._error is not None and self._on_error is None:
            raise self._error

    # --- completion -------------------------------------------------------------------------------

    async def _complete(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._batches))
            slots, size, task = self._batches[0]
            try:
                outcomes = await task
                if len(outcomes) != len(slots):
                    raise RuntimeError(f"pipeline answered {len(outcomes)} outcomes for {len(slots)} records")
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a bug: release nothing of this batch or after it
                self._error = exc
                async with self._changed:
                    self._changed.notify_all()
                if self._on_error is not None:
                    self._on_error(exc)
                return
            self._batches.popleft()
            released: list[Done[T]] = []
            for slot, outcome in zip(slots, outcomes, strict=True):
                slot.outcome = outcome
                rec = slot.record
                if slot.generation != self._generation.get((rec.topic, rec.partition), 0):
                    continue  # revoked since: another consumer owns (and redoes) it
                for done in self._tracker.finish(rec.topic, rec.partition, rec.offset):
                    assert done.outcome is not None
                    released.append(Done(done.record, done.payload, done.outcome))
            if released:
                await self._release(released)
            async with self._changed:
                self._in_flight -= len(slots)
                self._in_flight_bytes -= size
                self._changed.notify_all()


async def _awaited(awaitable: Awaitable[Sequence[Outcome]]) -> Sequence[Outcome]:
    return await awaitable


async def batches(
    next_record: Callable[[], Awaitable[SourceRecord | None]], size: int
) -> AsyncIterator[list[SourceRecord]]:
    """Group a reader's records (`next()` returning None at the end) into batches of at most `size`."""
    batch: list[SourceRecord] = []
    while (rec := await next_record()) is not None:
        batch.append(rec)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def run_to_end(
    next_record: Callable[[], Awaitable[SourceRecord | None]],
    process: Process,
    *,
    max_in_flight: int,
    batch_events: int,
    max_in_flight_bytes: int | None = None,
) -> list[Outcome]:
    """Drive a finite reader (a replay window, a benchmark's backlog) through `process`; every
    outcome, in the reader's order."""
    outcomes: list[Outcome] = []

    async def keep(done: Sequence[Done[None]]) -> None:
        outcomes.extend(d.outcome for d in done)

    driver: Driver[None] = Driver(
        process, max_in_flight=max_in_flight, release=keep, max_in_flight_bytes=max_in_flight_bytes
    )
    driver.start()
    try:
        async for batch in batches(next_record, batch_events):
            await driver.submit([(rec, None) for rec in batch])
        await driver.drain()
    finally:
        await driver.stop()
    return outcomes
