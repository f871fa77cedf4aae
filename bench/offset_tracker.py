"""What releasing offsets in order costs the event loop, as the number in flight on a partition grows.

    python bench/offset_tracker.py [--events 40000] [--repeats 5]

The driver starts every record it takes and finishes every record the pipeline answered
(stream/runners/offsets.py). A backlogged worker holds thousands of events in flight (the driver's
`max_in_flight`), and a worker pod owning one or two partitions holds them all on those. Each row
keeps N events in flight on one partition and moves `--events` through it: batches of 64 finish in
offset order, with the batch's own events finished in reverse (the worst case for holding back
within a batch), and the next batch starts. Reported: microseconds of the event loop's time per event
(start and finish), the median of `--repeats`, and each row's ratio to the smallest N. A tracker
that scans what is in flight grows with N: the tracker before the heap (b5444a3) cost 2.8, 16, 63
and 242 us an event at N = 64, 512, 2,048 and 8,192 on the 2-core CI machine, where this one cost
about 1 us at each; the event loop spends roughly 360 us on an event in all.
Writes bench/results/offset-tracker-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from stream.runners.offsets import OffsetTracker  # noqa: E402

IN_FLIGHT = (64, 512, 2048, 8192)
BATCH = 64


def us_per_event(in_flight: int, events: int) -> float:
    """Start `in_flight` events, then finish a batch and start the next until `events` went through."""
    tracker: OffsetTracker[int] = OffsetTracker()
    for offset in range(in_flight):
        tracker.start("t", 0, offset, offset)
    released = 0
    started = time.perf_counter()
    for low in range(0, events, BATCH):
        for offset in reversed(range(low, low + BATCH)):
            released += len(tracker.finish("t", 0, offset))
        for offset in range(low + in_flight, low + in_flight + BATCH):
            tracker.start("t", 0, offset, offset)
    elapsed = time.perf_counter() - started
    if released != len(range(0, events, BATCH)) * BATCH:
        raise RuntimeError(f"released {released} of {events}: the tracker lost events")
    return elapsed * 1e6 / released


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows: dict[int, list[float]] = {n: [] for n in IN_FLIGHT}
    for _ in range(args.repeats):  # rows alternate, so a noisy moment touches them all
        for n in IN_FLIGHT:
            rows[n].append(us_per_event(n, args.events))
    medians = {n: statistics.median(v) for n, v in rows.items()}
    base = medians[IN_FLIGHT[0]]
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "python": platform.python_version()},
        "events": args.events,
        "batch": BATCH,
        "rows": {str(n): {"us_per_event": medians[n], "over_smallest": medians[n] / base} for n in IN_FLIGHT},
    }
    print(f"machine: {result['machine']}")
    print(f"{'in flight':>10} {'us/event':>9} {'/ smallest':>11}")
    for n in IN_FLIGHT:
        print(f"{n:>10} {medians[n]:>9.2f} {medians[n] / base:>11.2f}")
    out = ROOT / "bench" / "results" / "offset-tracker-cpu.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
