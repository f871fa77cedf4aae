"""The worker's start-up heap leaves the collector's walks, and every pause is reported."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stream import metrics
from stream.runners.gc_pauses import freeze_startup_heap, observe_pauses


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def _count(generation: str) -> float:
    value = metrics.REGISTRY.get_sample_value("agegate_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_objects_alive_at_start_up_are_frozen_and_later_garbage_is_still_collected(unfrozen: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the cyclic collector frees it

    startup = Node()
    frozen = freeze_startup_heap()
    assert frozen > 1000  # the interpreter's own modules at least
    # Frozen objects are in no generation, so no collection walks them.
    assert all(o is not startup for gen in range(3) for o in gc.get_objects(generation=gen))

    later = Node()
    alive = weakref.ref(later)
    del later
    gc.collect()
    assert alive() is None


def test_every_collection_is_timed_by_generation() -> None:
    stop = observe_pauses()
    try:
        before = _count("2"), _count("0")
        gc.collect(2)
        gc.collect(0)
        assert _count("2") == before[0] + 1
        assert _count("0") == before[1] + 1
    finally:
        stop()
    gc.collect(2)
    assert _count("2") == before[0] + 1  # stopped: no longer observed
