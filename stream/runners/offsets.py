"""Which source offsets may be committed: only those whose event, and every event before it on the
same partition, is done (its decision or dead letter acknowledged by Kafka).

Events finish out of order (an event without frames overtakes one waiting for inference), so done
offsets are held back until the gap below them closes. The tracker releases them in offset order;
acking a framework in that order means no framework can commit past an in-flight event, whatever
its own commit logic does (faust's skips its gap check while the committed offset is 0 or None).
Pure logic, no I/O.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _PartitionState(Generic[T]):
    in_flight: set[int] = field(default_factory=set)
    done: list[tuple[int, int]] = field(default_factory=list)  # heap of (offset, seq)
    payloads: dict[int, T] = field(default_factory=dict)
    committable: int | None = None  # next offset to consume, as Kafka commits it


class OffsetTracker(Generic[T]):
    """Tracks in-flight offsets per (topic, partition). `T` is what the caller wants back per offset
    when it becomes releasable (for faust: the Event to ack)."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], _PartitionState[T]] = {}
        self._seq = 0

    def start(self, topic: str, partition: int, offset: int, payload: T) -> None:
        state = self._partitions.setdefault((topic, partition), _PartitionState())
        if offset in state.in_flight:
            raise ValueError(f"offset {offset} of {topic}[{partition}] is already in flight")
        state.in_flight.add(offset)
        state.payloads[offset] = payload

    def finish(self, topic: str, partition: int, offset: int) -> list[T]:
        """Mark one offset done; return the payloads that are now releasable, in offset order.

        A partition forgotten since (revoked) releases nothing: its new owner re-processes it.
        """
        state = self._partitions.get((topic, partition))
        if state is None:
            return []
        if offset not in state.in_flight:
            raise ValueError(f"offset {offset} of {topic}[{partition}] is not in flight")
        self._seq += 1
        heapq.heappush(state.done, (offset, self._seq))
        lowest_in_flight = min(state.in_flight)
        released: list[T] = []
        while state.done and state.done[0][0] == lowest_in_flight:
            done_offset, _ = heapq.heappop(state.done)
            state.in_flight.discard(done_offset)
            released.append(state.payloads.pop(done_offset))
            state.committable = done_offset + 1
            lowest_in_flight = min(state.in_flight) if state.in_flight else -1
        return released

    def committable(self, topic: str, partition: int) -> int | None:
        """The offset to commit for a partition (next to consume), or None when nothing is done yet."""
        state = self._partitions.get((topic, partition))
        return None if state is None else state.committable

    def in_flight(self) -> int:
        return sum(len(s.in_flight) for s in self._partitions.values())

    def forget(self, topic: str, partition: int) -> None:
        """A revoked partition: its in-flight events will be redelivered to the new owner."""
        self._partitions.pop((topic, partition), None)
