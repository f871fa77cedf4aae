"""The pipeline in one process, without Kafka or Redis: does it keep the model's device busy?

    python bench/pipeline.py [--quick] [--events N] [--checkpoint PATH] [--processes 1,2,4]
                             [--variants engine,pipeline,engine-noop,pipeline-noop] [--image-size PX]

bench/worker.py measures the deployed worker (faust, the broker, Redis) and needs them running. This
one isolates the pipeline's own cost per event, so it also runs where those services cannot (the
GPU machine: torch, numpy, Pillow, safetensors, plus the wheels of fastavro, cramjam, structlog,
tenacity and redis). Variants side by side, in one run:
  engine         InferenceEngine.score on the stream's frames in batches of 64 (median of 5 passes)
  pipeline       the same events (Avro, 2 frames each) through stream/pipeline/pipeline.py, driven by
                 the one driver (stream/runners/driver.py, the worker's batch size and in-flight
                 window), micro-batcher and engine as the worker wires them, the in-memory belief
                 repository (held to Redis's contract by tests/contract) and a sink that keeps the
                 encoded decisions in memory
  engine-noop    the engine with its forward pass replaced by a no-op (bench/noop_infer.py): decode only
  pipeline-noop  the pipeline with that no-op: the pipeline's own cost, all that remains on a GPU
  pipeline xK, pipeline-noop xK  (--processes K) K processes at once, each a pipeline on its own
                 users with cores / K threads: several worker processes per device, the way to feed
                 a GPU that one event loop cannot. Ratios are against the one-process engine rows.
With --decode-processes N, the engine and pipeline rows again as `... dpN`, frames decoded in N
processes (AGEGATE_DECODE_PROCESSES, model/decode_pool.py). For the pipeline rows, `model busy` is
the share of wall time the forward pass was running (each pass is decoded beside the one before it,
as in the worker): below 1, the device waits for the pipeline. Frames are 64 px by default, the
model's input and the cheapest decode there is; `--image-size 512` makes them photo-sized, where
decoding costs more. Writes bench/results/pipeline-<device>.json (`-<size>px` added when not 64).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from bench.noop_infer import _noop_infer  # noqa: E402
from model.engine import EncodedFrame, FrameResult, InferenceEngine  # noqa: E402
from stream.adapters.codec import AvroCodec  # noqa: E402
from stream.adapters.memory_beliefs import InMemoryBeliefStore  # noqa: E402
from stream.config import load_settings  # noqa: E402
from stream.core.belief import ErrorFloor  # noqa: E402
from stream.core.policy import load_policy  # noqa: E402
from stream.pipeline.assemble import batch_policy  # noqa: E402
from stream.pipeline.batching import MicroBatcher  # noqa: E402
from stream.pipeline.frames import FrameResolver, FrameStores  # noqa: E402
from stream.pipeline.pipeline import InvalidShareGuard, Pipeline  # noqa: E402
from stream.pipeline.ports import SourceRecord  # noqa: E402
from stream.runners.driver import run_to_end  # noqa: E402
from stream.tools.loadgen import synthetic_stream  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VARIANTS = ("engine", "pipeline", "engine-noop", "pipeline-noop")
ROLES = ("signups", "uploads", "feedback", "decisions", "dead_letters", "retained_frames")
TOPICS = {role: f"bench.{role}" for role in ROLES}
PARTITIONS = 12
DAY_S = 86400.0


class MemorySink:
    """Keeps what the pipeline produces (count and bytes): the output costs its encoding, no I/O."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        self.messages += 1
        self.bytes += len(value or b"")
        return (0, self.messages)

    async def send_all(
        self, messages: Sequence[tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]]
    ) -> None:
        for topic, key, value, headers in messages:
            await self.send(topic, key, value, headers)


class BusyClock:
    """Wraps a blocking scorer and sums the wall time it runs: the model's device is busy at most that."""

    def __init__(self, score: Any) -> None:
        self._score = score
        self.busy_s = 0.0

    def __call__(self, decoded: Any) -> list[FrameResult]:
        started = time.perf_counter()
        try:
            return list(self._score(decoded))
        finally:
            self.busy_s += time.perf_counter() - started


def load_engine(
    checkpoint: Path, device: str, threads: int, *, noop: bool, decode_processes: int = 0
) -> InferenceEngine:
    engine = InferenceEngine.from_checkpoint(
        checkpoint, device=device, threads=threads, decode_processes=decode_processes
    )
    if noop:
        engine.infer = _noop_infer.__get__(engine)  # type: ignore[method-assign]
    return engine


def source_records(n_events: int, *, seed: int, user_prefix: str = "synth", image_size: int = 64) -> list[SourceRecord]:
    """The load generator's stream (ages around every threshold, heavy uploaders, 2 frames per
    upload), as consumed records spread over partitions by user. `image_size`: the frames' side in
    pixels (64, the model's input, is the cheapest decode; phone photos are far larger)."""
    records: list[SourceRecord] = []
    offsets: dict[tuple[str, int], int] = {}
    for ev in synthetic_stream(n_events, seed=seed, frames_per_event=2, user_prefix=user_prefix, image_size=image_size):
        topic, partition = TOPICS[ev.role], zlib.crc32(ev.user_id.encode()) % PARTITIONS
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        records.append(SourceRecord(topic, partition, offset, ev.key, ev.value, int(time.time() * 1000)))
    return records


def frames_of(records: Sequence[SourceRecord]) -> list[EncodedFrame]:
    codec = AvroCodec()
    return [
        EncodedFrame(f["source"]["data"], f["source"]["content_type"])
        for rec in records
        for f in codec.decode(rec.value or b"").record.get("frames", [])
    ]


def engine_rate(engine: InferenceEngine, frames: list[EncodedFrame], batch: int) -> float:
    """Frames/s of the engine alone: the median of 5 passes (one pass is noisy on a shared machine)."""
    engine.score(frames[:batch])  # warm-up (and CUDA kernels chosen)
    rates = []
    for _ in range(5):
        started = time.perf_counter()
        for i in range(0, len(frames), batch):
            engine.score(frames[i : i + batch])
        rates.append(len(frames) / (time.perf_counter() - started))
    return statistics.median(rates)


async def pipeline_run(engine: InferenceEngine, records: list[SourceRecord]) -> dict[str, float]:
    """One pass of `records` through the pipeline as the worker wires it (stream/pipeline/assemble.py),
    with the in-memory belief repository and sink in place of Redis and Kafka."""
    settings = load_settings(environ={})
    busy = BusyClock(engine.score_decoded)
    batcher: MicroBatcher[EncodedFrame, FrameResult] = MicroBatcher(busy, batch_policy(settings), prepare=engine.decode)
    sink = MemorySink()
    store = InMemoryBeliefStore(
        half_life_s=settings.belief_half_life_days * DAY_S, ttl_s=settings.belief_ttl_days * DAY_S, clock=time.time
    )
    resolver = FrameResolver(FrameStores.parse("", max_bytes=settings.frame_max_bytes, timeout_s=1.0))
    pipeline = Pipeline(
        codec=AvroCodec(),
        scorer=batcher,
        model_version=engine.model_version,
        error_floor=ErrorFloor(engine.error_floor_years, engine.floor_ratio),
        store=store,
        policy=load_policy(None),
        sink=sink,
        resolver=resolver,
        topics=TOPICS,
        guard=InvalidShareGuard.never(),
    )
    batch_events = min(settings.queue_max_events, settings.batch_max_frames)
    it = iter(records)

    async def next_record() -> SourceRecord | None:
        return next(it, None)

    batcher.start()
    started = time.perf_counter()
    try:
        outcomes = await run_to_end(
            next_record, pipeline.process, max_in_flight=settings.queue_max_events, batch_events=batch_events
        )
    finally:
        await batcher.stop()
        await resolver.close()
    wall = time.perf_counter() - started
    decisions = sum(o.kind == "decision" for o in outcomes)
    if decisions != len(records):
        raise RuntimeError(f"{len(records)} events gave {decisions} decisions ({len(outcomes)} outcomes)")
    return {"events": len(records), "wall_s": wall, "model_busy_s": busy.busy_s, "started": started}


def pipeline_row(result: dict[str, float], frames: int) -> dict[str, float]:
    return {
        "events": result["events"],
        "frames_per_s": frames / result["wall_s"],
        "events_per_s": result["events"] / result["wall_s"],
        "model_busy": result["model_busy_s"] / result["wall_s"],
    }


def _process_main(
    checkpoint: str,
    device: str,
    threads: int,
    noop: bool,
    dp: int,
    n_events: int,
    seed: int,
    image_size: int,
    barrier: Any,
    out: Any,
) -> None:
    """One of K pipeline processes: its own users, started together with the others."""
    engine = load_engine(Path(checkpoint), device, threads, noop=noop, decode_processes=dp)
    records = source_records(n_events, seed=seed, user_prefix=f"p{seed}", image_size=image_size)
    frames = len(frames_of(records))
    engine.score(frames_of(records[:20]))  # warm-up before the common start
    barrier.wait()
    wall_start = time.time()
    result = asyncio.run(pipeline_run(engine, records))
    engine.close()
    out.put(
        {
            "events": result["events"],
            "frames": frames,
            "start": wall_start,
            "end": time.time(),
            "model_busy": result["model_busy_s"] / result["wall_s"],
        }
    )


def processes_row(
    checkpoint: Path,
    device: str,
    k: int,
    n_events: int,
    *,
    noop: bool,
    decode_processes: int = 0,
    image_size: int = 64,
) -> dict[str, float]:
    """K pipelines at once, each in its own process with cores / K inference threads; `model_busy`
    is the processes' mean."""
    ctx = mp.get_context("spawn")  # CUDA cannot be shared with a forked child
    barrier, out = ctx.Barrier(k), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // k)
    procs = [
        ctx.Process(
            target=_process_main,
            args=(
                str(checkpoint),
                device,
                threads,
                noop,
                decode_processes,
                n_events,
                100 + i,
                image_size,
                barrier,
                out,
            ),
        )
        for i in range(k)
    ]
    for p in procs:
        p.start()
    parts = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    events, frames = sum(p["events"] for p in parts), sum(p["frames"] for p in parts)
    return {
        "events": events,
        "frames_per_s": frames / wall,
        "events_per_s": events / wall,
        "model_busy": statistics.mean(p["model_busy"] for p in parts),
        "processes": k,
    }


def machine(device: str) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if device == "cuda" else None,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"machine: {result['machine']}")
    print(f"{'variant':20} {'frames/s':>10} {'events/s':>10} {'model busy':>11}")
    for name, row in result["rows"].items():
        busy = f"{row['model_busy']:.2f}" if "model_busy" in row else "-"
        events = f"{row['events_per_s']:.0f}" if "events_per_s" in row else "-"
        print(f"{name:20} {row['frames_per_s']:>10.0f} {events:>10} {busy:>11}")
    for name, value in result["ratios"].items():
        print(f"{name.replace('_over_', ' / ')} frames/s: {value:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (well under a minute)")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the demo model (trained if missing)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: every core)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--processes", default="", help="e.g. 2,4: also K pipeline processes at once")
    parser.add_argument(
        "--process-decoders", type=int, default=0, help="decode processes of each of the K pipelines (`... xK dpN`)"
    )
    parser.add_argument(
        "--decode-processes", default="", help="e.g. 1,4: also the engine and pipeline rows decoding in N processes"
    )
    parser.add_argument(
        "--image-size", type=int, default=64, help="frame side in pixels (64: the model's input; try 512 for photos)"
    )
    args = parser.parse_args()
    variants = {v.strip() for v in args.variants.split(",") if v.strip()}
    n = args.events or (400 if args.quick else 2000)
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    threads = args.threads or (os.cpu_count() or 1)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from model.testing import train_tiny_checkpoint

        checkpoint = train_tiny_checkpoint(Path.home() / ".cache" / "agegate" / "models" / "demo")
    records = source_records(n, seed=5, image_size=args.image_size)
    frames = frames_of(records)
    batch = load_settings(environ={}).batch_max_frames
    rows: dict[str, dict[str, float]] = {}
    for dp in [0] + [int(x) for x in args.decode_processes.split(",") if x.strip()]:
        for noop in (False, True):
            kind, suffix = "-noop" if noop else "", f" dp{dp}" if dp else ""
            engine = load_engine(checkpoint, device, threads, noop=noop, decode_processes=dp)
            if f"engine{kind}" in variants:
                rows[f"engine{kind}{suffix}"] = {"frames_per_s": engine_rate(engine, frames, batch)}
            if f"pipeline{kind}" in variants:
                asyncio.run(pipeline_run(engine, records[:200]))  # warm-up: imports, kernels, the codec's caches
                run = asyncio.run(pipeline_run(engine, records))
                rows[f"pipeline{kind}{suffix}"] = pipeline_row(run, len(frames))
            engine.close()
    for k in [int(x) for x in args.processes.split(",") if x.strip()]:
        for noop in (False, True):
            suffix = "-noop" if noop else ""
            if f"pipeline{suffix}" in variants:
                dp = args.process_decoders
                rows[f"pipeline{suffix} x{k}" + (f" dp{dp}" if dp else "")] = processes_row(
                    checkpoint, device, k, n, noop=noop, decode_processes=dp, image_size=args.image_size
                )
    ratios: dict[str, float] = {}
    for name in rows:
        kind = "-noop" if name.startswith("pipeline-noop") else ""
        pool = next((part for part in name.split() if part.startswith("dp")), "")
        for base in {f"engine{kind}", f"engine{kind} {pool}".strip()}:
            if name.startswith("pipeline") and base in rows:
                ratios[f"{name}_over_{base}"] = rows[name]["frames_per_s"] / rows[base]["frames_per_s"]
    result: dict[str, Any] = {
        "machine": machine(device),
        "events": n,
        "frames": len(frames),
        "image_size": args.image_size,
        "threads": threads,
        "checkpoint": str(checkpoint),
        "rows": rows,
        "ratios": ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    size = "" if args.image_size == 64 else f"-{args.image_size}px"
    out = RESULTS / f"pipeline-{device}{size}.json"
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
