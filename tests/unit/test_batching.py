"""Micro-batching: the pure flush decision, and the batcher closing batches on size or on wait."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from stream import metrics
from stream.config import Settings
from stream.pipeline.assemble import consumer_batch, consumer_buffer_events
from stream.pipeline.batching import BatchPolicy, MicroBatcher


@given(st.integers(1, 256), st.floats(0.001, 1.0), st.integers(0, 600), st.floats(0.0, 2.0))
def test_policy_flushes_exactly_on_size_or_wait(max_frames: int, max_wait: float, pending: int, waited: float) -> None:
    policy = BatchPolicy(max_frames, max_wait)
    expected = pending >= max_frames or (pending > 0 and waited >= max_wait)
    assert policy.should_flush(pending, waited) is expected
    assert 0 <= policy.wait_left(waited) <= max_wait


class Recorder:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.started = threading.Event()  # set when the first pass begins

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batches.append(list(items))
        return [i * 10 for i in items]


async def test_full_batches_close_on_size_and_results_map_back() -> None:
    gate = threading.Event()
    scorer = Recorder(gate)
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, BatchPolicy(max_frames=4, max_wait_s=60))
    batcher.start()
    tasks = [asyncio.create_task(batcher.score(i)) for i in range(8)]
    await asyncio.sleep(0)  # let the tasks enqueue
    gate.set()
    results = await asyncio.gather(*tasks)
    await batcher.stop()
    assert results == [i * 10 for i in range(8)]
    assert [len(b) for b in scorer.batches] == [4, 4]  # closed by size, long before the 60 s wait


async def test_a_partial_batch_closes_on_the_wait_bound() -> None:
    scorer = Recorder()
    now = [0.0]
    batcher: MicroBatcher[int, int] = MicroBatcher(
        scorer, BatchPolicy(max_frames=64, max_wait_s=0.02), clock=lambda: now[0]
    )
    batcher.start()
    task = asyncio.create_task(batcher.score(7))
    await asyncio.sleep(0)
    now[0] = 1.0  # the injected clock says the oldest frame waited past the bound
    assert await asyncio.wait_for(task, timeout=5) == 70
    await batcher.stop()
    assert scorer.batches == [[7]]


async def test_a_failing_scorer_fails_only_its_batch() -> None:
    calls = []

    def flaky(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("device error")
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(flaky, BatchPolicy(max_frames=2, max_wait_s=60))
    batcher.start()
    first = [asyncio.create_task(batcher.score(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    second = [asyncio.create_task(batcher.score(i)) for i in (3, 4)]
    failed = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(f, RuntimeError) for f in failed)
    assert await asyncio.gather(*second) == [3, 4]
    await batcher.stop()


async def test_with_no_wait_a_free_model_scores_at_once_and_a_busy_one_gathers_the_next_batch() -> None:
    """The worker's default (AGEGATE_INFERENCE_MAX_WAIT_MS=0): the consumer's batch already waited,
    so a free model scores it at once; frames that arrive during a pass share the next one."""
    gate = threading.Event()
    scorer = Recorder(gate)
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, BatchPolicy(max_frames=64, max_wait_s=0.0))
    batcher.start()
    first = asyncio.create_task(batcher.score_many([1, 2]))
    assert await asyncio.to_thread(scorer.started.wait, 5)  # the pass began without waiting for more
    second = asyncio.create_task(batcher.score_many([3]))
    third = asyncio.create_task(batcher.score_many([4, 5]))
    await asyncio.sleep(0)  # both enqueue while the model is busy
    gate.set()
    assert await asyncio.gather(first, second, third) == [[10, 20], [30], [40, 50]]
    await batcher.stop()
    assert scorer.batches == [[1, 2], [3, 4, 5]]


async def test_a_full_pass_waits_queued_behind_the_running_one_and_starts_without_the_event_loop() -> None:
    """Under load the model thread must go from one pass to the next by itself: were the next pass
    handed over only once the event loop saw the first finish, every pass would also wait for a
    busy loop's turn. A partial pass is not queued: it gathers the frames that arrive meanwhile."""
    gate, second_started = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def scorer(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            gate.wait(timeout=10)
        else:
            second_started.set()
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, BatchPolicy(max_frames=2, max_wait_s=0.0))
    batcher.start()
    first = asyncio.create_task(batcher.score_many([1, 2]))
    second = asyncio.create_task(batcher.score_many([3, 4]))
    third = asyncio.create_task(batcher.score_many([5]))
    for _ in range(1000):  # yield to the batcher until it has handed over the two full passes
        if batcher.handed == 2:
            break
        await asyncio.sleep(0)
    assert batcher.handed == 2
    assert batcher.pending == 1  # the partial pass waits while the model is busy
    gate.set()
    # Block the event loop: the queued pass must start without it.
    assert second_started.wait(timeout=10)
    assert await asyncio.gather(first, second, third) == [[10, 20], [30, 40], [50]]
    await batcher.stop()
    assert batches == [[1, 2], [3, 4], [5]]


async def test_with_a_prepare_step_the_next_pass_is_prepared_while_one_is_scored() -> None:
    """The engine's decode runs as the prepare step: decoding pass 2 must not wait for pass 1's forward
    pass, and the model thread must take pass 2 from the prepare thread without the event loop."""
    second_prepared, release_first = threading.Event(), threading.Event()
    prepared: list[list[int]] = []
    scored: list[list[int]] = []

    def prepare(items: Sequence[int]) -> list[int]:
        prepared.append(list(items))
        if len(prepared) == 2:
            second_prepared.set()
        return [i + 1 for i in items]

    third_scored = threading.Event()

    def scorer(decoded: list[int]) -> list[int]:
        scored.append(decoded)
        if len(scored) == 1:  # pass 1 is scored only once pass 2 has been prepared beside it
            assert second_prepared.wait(timeout=10)
            assert release_first.wait(timeout=10)
        if len(scored) == 3:
            third_scored.set()
        return [d * 10 for d in decoded]

    decode_count = metrics.REGISTRY.get_sample_value("agegate_decode_seconds_count") or 0.0
    batcher: MicroBatcher[int, int] = MicroBatcher(scorer, BatchPolicy(max_frames=2, max_wait_s=0.0), prepare=prepare)
    batcher.start()
    first = asyncio.create_task(batcher.score_many([1, 2]))
    second = asyncio.create_task(batcher.score_many([3, 4]))
    third = asyncio.create_task(batcher.score_many([5, 6]))
    assert await asyncio.to_thread(second_prepared.wait, 10)
    for _ in range(1000):  # yield until the batcher has handed over all three full passes
        if batcher.handed == 3:
            break
        await asyncio.sleep(0)
    assert batcher.handed == 3  # one scored, one prepared, one queued to prepare
    release_first.set()
    # Block the event loop: passes 2 and 3 must go from the prepare thread to the model thread without it.
    assert third_scored.wait(timeout=10)
    assert await asyncio.gather(first, second, third) == [[20, 30], [40, 50], [60, 70]]
    await batcher.stop()
    assert prepared == [[1, 2], [3, 4], [5, 6]]
    assert scored == [[2, 3], [4, 5], [6, 7]]
    # each pass's decode is timed apart from its forward pass (the dashboard shows both)
    assert metrics.REGISTRY.get_sample_value("agegate_decode_seconds_count") == decode_count + 3


async def test_a_failing_prepare_step_fails_only_its_pass() -> None:
    def prepare(items: Sequence[int]) -> list[int]:
        if 1 in items:
            raise RuntimeError("decoder bug")
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda xs: [x * 10 for x in xs], BatchPolicy(max_frames=2, max_wait_s=60), prepare=prepare
    )
    batcher.start()
    first = [asyncio.create_task(batcher.score(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    second = [asyncio.create_task(batcher.score(i)) for i in (3, 4)]
    failed = await asyncio.gather(*first, return_exceptions=True)
    assert [str(f) for f in failed] == ["decoder bug", "decoder bug"]
    assert await asyncio.gather(*second) == [30, 40]
    await batcher.stop()


def test_faust_holds_a_few_consumer_batches_ahead_not_the_whole_in_flight_bound() -> None:
    """Records in faust's buffer sit outside the driver's byte bound, so the buffer stays a few
    batches deep however many events may be in flight."""
    settings = Settings()
    events, _ = consumer_batch(settings)
    assert consumer_buffer_events(settings) == 8 * events < settings.queue_max_events
    small = dataclasses.replace(settings, queue_max_events=100)
    assert consumer_buffer_events(small) == 100
