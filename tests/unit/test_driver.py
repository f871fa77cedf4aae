"""The one driver: bounded in flight, released in submission (so per-partition offset) order, only
what is done, nothing of a revoked partition, and a paused input refuses batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from stream.pipeline.ports import Outcome, SourceRecord
from stream.runners.driver import Done, Driver


def rec(offset: int, partition: int = 0) -> SourceRecord:
    return SourceRecord("t", partition, offset, None, None, 0)


class Gated:
    """A pipeline whose batches finish only when the test opens their gate."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []

    def __call__(self, records: Sequence[SourceRecord]) -> asyncio.Future[list[Outcome]]:
        gate = asyncio.Event()
        self.gates.append(gate)

        async def run() -> list[Outcome]:
            await gate.wait()
            return [Outcome("decision", reason=str(r.offset)) for r in records]

        return asyncio.ensure_future(run())


async def test_batches_are_released_in_submission_order_even_when_they_finish_out_of_order() -> None:
    process = Gated()
    released: list[int] = []

    async def release(done: Sequence[Done[str]]) -> None:
        released.extend(d.record.offset for d in done)

    driver: Driver[str] = Driver(process, max_in_flight=10, release=release)
    driver.start()
    await driver.submit([(rec(0), "a"), (rec(1), "b")])
    await driver.submit([(rec(2), "c")])
    process.gates[1].set()
    await asyncio.sleep(0.01)
    assert released == []  # offsets 0 and 1 are still in flight: nothing after them is released
    assert driver.committable("t", 0) is None
    process.gates[0].set()
    await driver.drain()
    assert released == [0, 1, 2]
    assert driver.committable("t", 0) == 3
    await driver.stop()


async def test_a_full_driver_makes_submit_wait_and_a_paused_one_refuses() -> None:
    process = Gated()

    async def release(done: Sequence[Done[None]]) -> None:
        return None

    driver: Driver[None] = Driver(process, max_in_flight=2, release=release)
    driver.start()
    assert await driver.submit([(rec(0), None), (rec(1), None)])
    waiting = asyncio.ensure_future(driver.submit([(rec(2), None)]))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # backpressure: the caller stops taking input
    assert driver.in_flight == 2
    driver.pause()
    process.gates[0].set()
    assert await waiting is False  # paused while it waited: the batch was not taken
    assert len(process.gates) == 1
    driver.resume()
    assert await driver.submit([(rec(2), None)])
    process.gates[1].set()
    await driver.drain()
    await driver.stop()


async def test_the_byte_bound_holds_back_heavy_records_and_a_lone_oversized_batch_still_passes() -> None:
    """Events with large frames fill memory long before the event bound: the byte bound stops them."""
    process = Gated()

    async def release(done: Sequence[Done[None]]) -> None:
        return None

    def heavy(offset: int, size: int) -> SourceRecord:
        return SourceRecord("t", 0, offset, None, b"x" * size, 0)

    driver: Driver[None] = Driver(process, max_in_flight=100, max_in_flight_bytes=1000, release=release)
    driver.start()
    assert await driver.submit([(heavy(0, 600), None)])
    waiting = asyncio.ensure_future(driver.submit([(heavy(1, 600), None)]))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # 1,200 bytes would be in flight, though 2 events are far below 100
    assert driver.in_flight_bytes == 600
    process.gates[0].set()
    assert await waiting
    assert driver.in_flight_bytes == 600  # the first released, the second taken
    process.gates[1].set()
    await driver.drain()
    assert driver.in_flight_bytes == 0
    # A batch larger than the bound is taken once nothing is in flight (it would otherwise wait forever).
    oversized = asyncio.ensure_future(driver.submit([(heavy(2, 5000), None)]))
    assert await asyncio.wait_for(oversized, timeout=5)
    process.gates[2].set()
    await driver.drain()
    await driver.stop()


async def test_a_revoked_partition_releases_nothing_more() -> None:
    process = Gated()
    released: list[tuple[int, int]] = []

    async def release(done: Sequence[Done[None]]) -> None:
        released.extend((d.record.partition, d.record.offset) for d in done)

    driver: Driver[None] = Driver(process, max_in_flight=10, release=release)
    driver.start()
    await driver.submit([(rec(0, partition=0), None), (rec(0, partition=1), None)])
    driver.forget("t", 0)
    process.gates[0].set()
    await driver.drain()
    assert released == [(1, 0)]
    await driver.stop()


async def test_a_failing_batch_releases_nothing_and_is_raised() -> None:
    released: list[int] = []

    async def release(done: Sequence[Done[None]]) -> None:
        released.extend(d.record.offset for d in done)

    async def broken(records: Sequence[SourceRecord]) -> list[Outcome]:
        raise RuntimeError("a bug")

    driver: Driver[None] = Driver(broken, max_in_flight=10, release=release)
    driver.start()
    await driver.submit([(rec(0), None)])
    with pytest.raises(RuntimeError, match="a bug"):
        await driver.drain()
    assert released == []
    await driver.stop()
