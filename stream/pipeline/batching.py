"""Micro-batching: frames from many events share one forward pass, bounded by size and by wait.

`BatchPolicy` is the pure decision (flush now? how long may we still wait?), tested without
clocks or threads. `MicroBatcher` applies it: callers `await score_many(frames)` (one future per
call, however many frames: a batch of events is awaited once); one background task forms batches
from everything pending and runs the scorer off the event loop, so consumers keep heartbeating.

A scorer given with a `prepare` step (the engine's decode) runs as two stages, each in its own
thread: a pass is prepared in one while the pass before it is scored in the other. Run one after
the other in one thread, decoding and the forward pass each left the other's core idle: on the
2-core CI machine a backlogged worker kept the machine 1.41 cores busy, its decoder process 0.29
and its model threads 0.56 (stop 30's note has the measurement).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from stream import metrics

F = TypeVar("F")
R = TypeVar("R")

# Passes handed to the model thread and not finished: the one running and one full pass behind it;
# with a prepare stage, also one full pass being prepared for it.
_MAX_PASSES_HANDED = 2
_MAX_PASSES_HANDED_STAGED = 3


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_frames: int
    max_wait_s: float

    def should_flush(self, pending: int, oldest_waited_s: float) -> bool:
        return pending >= self.max_frames or (pending > 0 and oldest_waited_s >= self.max_wait_s)

    def wait_left(self, oldest_waited_s: float) -> float:
        return max(0.0, self.max_wait_s - oldest_waited_s)


class _Group(Generic[R]):
    """The frames of one `score_many` call: their results, and the one future that delivers them."""

    __slots__ = ("future", "left", "results")

    def __init__(self, n: int, future: asyncio.Future[list[R]]) -> None:
        self.results: list[R | None] = [None] * n
        self.left = n
        self.future = future

    def fill(self, index: int, result: R) -> None:
        self.results[index] = result
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(self.results)  # type: ignore[arg-type]  # all filled now

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class MicroBatcher(Generic[F, R]):
    """Batches items for `scorer` (a blocking function from a list of items to a list of results).

    The scorer runs in one worker thread: one forward pass at a time, while the next batch forms
    (a full one waits queued behind the running pass, see `_may_start`). With `prepare`, a pass is
    `scorer(prepare(items))`, `prepare` running in a second thread ahead of the scorer's.
    """

    def __init__(
        self,
        scorer: Callable[[Any], Sequence[R]],
        policy: BatchPolicy,
        *,
        prepare: Callable[[Sequence[F]], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """`scorer` takes a pass's items, or what `prepare` made of them when it is given."""
        self._scorer = scorer
        self._prepare = prepare
        self.policy = policy
        self._clock = clock
        self._pending: deque[tuple[F, _Group[R], int, float]] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._prepare_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") if prepare is not None else None
        )
        self._max_handed = _MAX_PASSES_HANDED if prepare is None else _MAX_PASSES_HANDED_STAGED
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()  # passes handed to the model thread
        self._on_batch = on_batch
        self.batches = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Finish what is pending, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._task
        self._task = None
        if self._prepare_executor is not None:
            self._prepare_executor.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    _closing = False

    async def score(self, item: F) -> R:
        (result,) = await self.score_many([item])
        return result

    async def score_many(self, items: Sequence[F]) -> list[R]:
        """Results for `items`, in order; they may share forward passes with any other caller's."""
        if self._task is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if not items:
            return []
        group: _Group[R] = _Group(len(items), asyncio.get_running_loop().create_future())
        was_empty = not self._pending
        now = self._clock()
        self._pending.extend((item, group, i, now) for i, item in enumerate(items))
        if was_empty or len(self._pending) >= self.policy.max_frames:
            self._wakeup.set()
        return await group.future

    def _may_start(self, running: int) -> bool:
        """Whether to hand the model another pass now, with `running` passes handed and unfinished.

        None running: the policy decides (size or wait). One running: only a full pass, queued
        behind it, so the model thread goes from one pass to the next without waiting for the
        event loop to see the first one finish; a partial pass waits and gathers the frames that
        arrive meanwhile. Two (three with a prepare stage): nothing until one finishes.
        """
        if running >= self._max_handed or not self._pending:
            return False
        if self._closing or len(self._pending) >= self.policy.max_frames:
            return True
        return running == 0 and self.policy.should_flush(len(self._pending), self._waited())

    def _waited(self) -> float:
        return self._clock() - self._pending[0][3]

    @property
    def handed(self) -> int:
        """Passes handed to the model thread and not finished (at most two: one running, one queued;
        three with a prepare stage: one more being prepared)."""
        return sum(not t.done() for t in self._running)

    @property
    def pending(self) -> int:
        """Frames waiting for a pass."""
        return len(self._pending)

    async def _run(self) -> None:
        while True:
            self._running = {t for t in self._running if not t.done()}
            if self._may_start(len(self._running)):
                take = min(len(self._pending), self.policy.max_frames)
                batch = [self._pending.popleft() for _ in range(take)]
                loop = asyncio.get_running_loop()
                items = [item for item, _, _, _ in batch]
                # Handed to a thread now (not when a task first runs): it starts once that thread is free.
                if self._prepare_executor is None:
                    scored = loop.run_in_executor(self._executor, self._timed, items)
                else:
                    handed = loop.run_in_executor(self._prepare_executor, self._prepare_and_hand, items)
                    scored = loop.create_task(self._scored(handed))
                self._running.add(loop.create_task(self._finish(batch, scored)))
                continue
            if self._closing and not self._pending:
                await asyncio.gather(*self._running)
                return
            # Sleep until frames arrive, a pass finishes, or (the model free) the oldest frame's wait ends.
            timeout = self.policy.wait_left(self._waited()) if self._pending and not self._running else None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)

    async def _finish(
        self, batch: list[tuple[F, _Group[R], int, float]], scored: Awaitable[tuple[Sequence[R], float]]
    ) -> None:
        """Deliver a pass's results to its callers (or its failure), then wake the batcher."""
        try:
            results, elapsed = await scored
            if len(results) != len(batch):
                raise RuntimeError(f"scorer returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # the whole batch failed (a bug, or the device): fail its callers
            for _, group, _, _ in batch:
                group.fail(exc)
            return
        finally:
            self._wakeup.set()
        self.batches += 1
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.INFERENCE_SECONDS.observe(elapsed)
        if self._on_batch:
            self._on_batch(len(batch), elapsed)
        for (_, group, index, _), result in zip(batch, results, strict=True):
            group.fill(index, result)

    def _timed(self, items: Any) -> tuple[Sequence[R], float]:
        """The scorer, timed in its own thread (a pass queued behind another does not count its wait)."""
        started = time.perf_counter()
        results = self._scorer(items)
        return results, time.perf_counter() - started

    def _prepare_and_hand(self, items: Sequence[F]) -> Future[tuple[Sequence[R], float]]:
        """In the prepare thread: prepare a pass and queue it for the scorer straight from here, so
        the model thread never waits for the event loop to pass it on."""
        assert self._prepare is not None
        started = time.perf_counter()
        prepared = self._prepare(items)
        metrics.DECODE_SECONDS.observe(time.perf_counter() - started)
        return self._executor.submit(self._timed, prepared)

    @staticmethod
    async def _scored(handed: Awaitable[Future[tuple[Sequence[R], float]]]) -> tuple[Sequence[R], float]:
        return await asyncio.wrap_future(await handed)
