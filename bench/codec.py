"""What the worker's two Avro operations cost per message: decoding an event, encoding a decision.

Both run on the event loop's thread, once per event, so every microsecond here is one the loop
does not spend feeding the model. Three variants, side by side in one run:
- `codec`: `AvroCodec` as the worker uses it (Confluent framing, checks, schemas parsed once with
  fastavro's hint, no resolution when the writer schema is ours);
- `reparsed`: fastavro given schemas parsed without the hint and a reader schema equal to the
  writer's, which is what the codec did before: fastavro parses the schema again on every call
  and compares the two schemas before it reads;
- `fastavro`: the library alone on hinted schemas, no framing or checks: the floor.

    python bench/codec.py [--n 20000]

Prints a table and writes bench/results/codec-cpu.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
from machine import cpu_model  # bench/ is on sys.path when run as a script

from stream.adapters.codec import HEADER, AvroCodec
from stream.core.subjects import DECISION, UPLOAD
from stream.tools.loadgen import synthetic_stream

RESULTS = Path(__file__).resolve().parent / "results" / "codec-cpu.json"


def decision() -> dict[str, Any]:
    """A decision as the worker writes one (stream/pipeline/decide.py `decision_record`)."""
    return {
        "decision_id": "5f0c2a4e-1b7d-5c7e-9d2a-0f3e4b5c6d7e",
        "idempotency_key": "agegate.uploads/3/123456",
        "user_id": "synth-1-0",
        "event_id": "ev-1234567890",
        "event_type": "UploadEvent",
        "source_topic": "agegate.uploads",
        "source_partition": 3,
        "source_offset": 123456,
        "jurisdiction": "GB",
        "surface": "adult_content",
        "action": "RESTRICT",
        "reason_codes": ["p_below_threshold"],
        "evidence": {
            "age_mean": 21.3,
            "age_std": 3.2,
            "observations": 4,
            "threshold": 18.0,
            "buffer": 2.0,
            "p_at_least_threshold": 0.83,
            "verified": False,
            "declared_age": None,
            "frames_scored": 2,
            "frames_failed": 0,
        },
        "model_version": "demo@1",
        "policy_version": "2026-11-01",
        "event_time": dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        "decided_at": dt.datetime(2026, 12, 1, 0, 0, 1, tzinfo=dt.UTC),
    }


def per_call_us(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """The best of `repeats` timings of n calls: the machine is shared, the minimum is the cost."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return min(times)


def variants(codec: AvroCodec, events: list[bytes]) -> dict[str, dict[str, Callable[[], object]]]:
    schema_id = HEADER.unpack_from(events[0])[1]
    writer = codec.registry.by_id(schema_id)
    if writer is None or writer.subject != UPLOAD:
        raise SystemExit(f"schema id {schema_id} is not the upload schema: the manifest changed")
    out_schema = codec.registry.writer_for(DECISION)
    unhinted_in = fastavro.parse_schema(json.loads(writer.definition), _write_hint=False)
    unhinted_in_reader = fastavro.parse_schema(json.loads(writer.definition), _write_hint=False)
    unhinted_out = fastavro.parse_schema(json.loads(out_schema.definition), _write_hint=False)
    record = decision()
    cycle = iter(range(1 << 62))

    def event() -> bytes:
        return events[next(cycle) % len(events)]

    def write(schema: Any) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, record, strict_allow_default=True)
        return out.getvalue()

    return {
        "codec": {
            "decode event": lambda: codec.decode(event(), UPLOAD),
            "encode decision": lambda: codec.encode(DECISION, record),
        },
        "reparsed": {
            "decode event": lambda: fastavro.schemaless_reader(
                io.BytesIO(event()[HEADER.size :]), unhinted_in, unhinted_in_reader
            ),
            "encode decision": lambda: write(unhinted_out),
        },
        "fastavro": {
            "decode event": lambda: fastavro.schemaless_reader(io.BytesIO(event()[HEADER.size :]), writer.parsed),
            "encode decision": lambda: write(out_schema.parsed),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="calls per timing")
    args = parser.parse_args()
    codec = AvroCodec()
    events = [e.value for e in synthetic_stream(64, seed=1, frames_per_event=2, codec=codec) if e.role == "uploads"]
    rows = {
        name: {op: per_call_us(fn, args.n) for op, fn in ops.items()} for name, ops in variants(codec, events).items()
    }
    ops = ("decode event", "encode decision")
    ratios = {f"reparsed / codec, {op}": rows["reparsed"][op] / rows["codec"][op] for op in ops}
    machine = {"cpu": cpu_model(), "python": platform.python_version(), "fastavro": fastavro.__version__}
    print(f"machine: {machine}")
    print(f"event: an upload with 2 frames, {statistics.mean(map(len, events)):.0f} bytes on average")
    print(f"{'variant':10s} {'decode event us':>16s} {'encode decision us':>19s}")
    for name, row in rows.items():
        print(f"{name:10s} {row['decode event']:16.1f} {row['encode decision']:19.1f}")
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}")
    RESULTS.write_text(json.dumps({"machine": machine, "n": args.n, "rows": rows, "ratios": ratios}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
