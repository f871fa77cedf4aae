"""Where the pipeline's own CPU goes, step by step: each pure step replayed alone on real inputs.

    python bench/pipeline_steps.py [--events 4000] [--repeats 3]

On a GPU the forward pass is nearly free and what remains is the event loop's own work, one thread
for every event (docs/architecture.md, "What two cores allow"). This runs the events of
bench/pipeline.py's stream (2 frames each, ages around every threshold) once through the pipeline as
the worker wires it, with the no-op forward pass, the in-memory belief repository and an in-memory
sink, recording the arguments every call of the pure steps received. It then replays each step
alone, in a loop, on exactly those arguments: inside the pipeline a step's wall time also holds
what the prepare and model threads took of the interpreter lock, so timing it there overstates it.

Rows: decode (Avro and the event's fields, per batch), prepare (frame results to a belief request),
decide (policy, reasons and the decision record; `record` is the record alone), encode (the
decision's Avro) and account (metrics and the invalid-share guard, per batch), in microseconds per
event; and the process CPU per event of the whole run (every thread of this process; the decoder
process not counted), which the steps are a share of. Redis's client cost is measured by
bench/belief.py, Kafka's by bench/worker.py. Writes bench/results/pipeline-steps-cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import stream.pipeline.pipeline as pipeline_module  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from bench.pipeline import load_engine, pipeline_run, source_records  # noqa: E402
from model.testing import train_tiny_checkpoint  # noqa: E402
from stream.adapters.codec import AvroCodec  # noqa: E402
from stream.pipeline import decide as decide_module  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "pipeline-steps-cpu.json"
MAX_CAPTURED = 5000

# Row -> (object holding the step, its attribute name, whether it is called once per batch).
STEPS: dict[str, tuple[Any, str, bool]] = {
    "decode": (pipeline_module, "decode_batch", True),
    "prepare": (pipeline_module, "prepare", False),
    "decide": (pipeline_module, "decide_event", False),
    "record": (decide_module, "decision_record", False),
    "encode": (AvroCodec, "encode", False),
    "account": (pipeline_module.Pipeline, "_account", True),
}


class Recorder:
    """Swaps each step for a wrapper that keeps its first MAX_CAPTURED calls' arguments."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {name: [] for name in STEPS}
        self.originals: dict[str, Callable[..., Any]] = {}

    def __enter__(self) -> Recorder:
        for name, (owner, attr, _) in STEPS.items():
            original = self.originals[name] = getattr(owner, attr)
            setattr(owner, attr, self._recording(name, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, (owner, attr, _) in STEPS.items():
            setattr(owner, attr, self.originals[name])

    def _recording(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        calls = self.calls[name]

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(calls) < MAX_CAPTURED:
                calls.append((args, kwargs))
            return original(*args, **kwargs)

        return wrapper


def replay_us(step: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]], repeats: int) -> float:
    """Microseconds per call of `step` alone on the recorded arguments (median over `repeats` loops)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for args, kwargs in calls:
            step(*args, **kwargs)
        times.append((time.perf_counter() - started) * 1e6 / len(calls))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checkpoint = train_tiny_checkpoint(Path.home() / ".cache" / "agegate" / "models" / "demo")
    engine = load_engine(checkpoint, "cpu", 0, noop=True, decode_processes=1)
    records = source_records(args.events, seed=21, user_prefix=f"steps{time.time_ns()}")
    try:
        with Recorder() as recorder:
            cpu_started = time.process_time()
            run = asyncio.run(pipeline_run(engine, records))
            cpu_us_per_event = (time.process_time() - cpu_started) * 1e6 / len(records)
    finally:
        engine.close()
    batches = len(recorder.calls["decode"])
    events_per_batch = len(records) / max(batches, 1)
    rows: dict[str, dict[str, float]] = {}
    for name, (_, _, per_batch) in STEPS.items():
        calls = recorder.calls[name]
        us_per_call = replay_us(recorder.originals[name], calls, args.repeats)
        per_event = us_per_call / events_per_batch if per_batch else us_per_call
        rows[name] = {"us_per_event": per_event, "calls_replayed": len(calls)}
    steps_total = sum(row["us_per_event"] for name, row in rows.items() if name != "record")  # decide holds it
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "python": platform.python_version()},
        "events": len(records),
        "events_per_batch": events_per_batch,
        "events_per_s": len(records) / run["wall_s"],
        "process_cpu_us_per_event": cpu_us_per_event,
        "steps_us_per_event": steps_total,
        "rows": rows,
    }
    print(f"machine: {result['machine']}; {len(records)} events, {events_per_batch:.0f} a batch")
    print(f"{'step':10} {'us/event alone':>15} {'share of process CPU':>21}")
    for name, row in rows.items():
        print(f"{name:10} {row['us_per_event']:>15.1f} {row['us_per_event'] / cpu_us_per_event:>21.1%}")
    print(f"{'steps':10} {steps_total:>15.1f} {steps_total / cpu_us_per_event:>21.1%}  (record is part of decide)")
    print(
        f"the whole run: {cpu_us_per_event:.0f} us of this process's CPU an event, "
        f"{result['events_per_s']:.0f} events/s (in-memory beliefs and sink)"
    )
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
