"""Worker benchmark: end-to-end frames/s against the inference engine alone, same model, same run.

Variants side by side (ratios matter more than absolutes on a shared machine):
  engine       InferenceEngine.score on the same frames in batches of batch_max_frames
  worker       `agegate worker` draining a backlog, micro-batching on (default settings)
  worker-b1    the same with micro-batching off (AGEGATE_BATCH_MAX_FRAMES=1)
  latency      p50/p99 event-to-decision with the producer paced at half the worker's maximum
Peak RSS of the worker process (VmHWM) is reported too. Writes bench/results/worker-<device>.json.

    python bench/worker.py [--quick] [--events N]

Needs the local Kafka and Redis (deploy/local/infra.sh up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from model.engine import EncodedFrame, InferenceEngine
from model.testing import train_tiny_checkpoint
from stream.adapters.codec import AvroCodec
from stream.adapters.topics import TopicAdmin
from stream.config import Settings, load_settings
from stream.tools.loadgen import synthetic_stream
from stream.tools.localrun import OutputReader, WorkerProcess, worker_env
from stream.tools.produce import produce

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def fresh_settings(batch: str) -> Settings:
    unique = uuid.uuid4().hex[:6]
    settings = load_settings(topic_prefix=f"bench{unique}.", consumer_group=f"bench{unique}-{batch}")
    TopicAdmin(settings).create()
    return settings


def engine_rate(model: Path, frames: list[EncodedFrame], batch: int, threads: int) -> float:
    engine = InferenceEngine.from_checkpoint(model, device="auto", threads=threads)
    engine.score(frames[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(frames), batch):
        engine.score(frames[i : i + batch])
    return len(frames) / (time.perf_counter() - started)


def worker_run(model: Path, n_events: int, *, batch: int, rate: float, threads: int, seed: int) -> dict[str, Any]:
    """Backlog (rate 0: produced before the worker starts) or paced (rate > 0: while it runs)."""
    settings = fresh_settings(f"b{batch}")
    stream = list(synthetic_stream(n_events, seed=seed, bad_share=0.0, frames_per_event=2))
    env = worker_env(
        settings,
        model=model,
        redis_url=settings.redis_url,
        redis_prefix=f"bench{uuid.uuid4().hex[:6]}",
        AGEGATE_BATCH_MAX_FRAMES=str(batch),
        AGEGATE_INFERENCE_THREADS=str(threads),
        AGEGATE_BATCH_MAX_WAIT_MS="25",
    )
    log = Path("/tmp") / f"agegate-bench-worker-{uuid.uuid4().hex[:6]}.log"
    produced = produce(settings, stream) if rate == 0 else []
    worker = WorkerProcess(env, log).start()
    reader = OutputReader(settings)
    try:
        worker.wait_ready(timeout=180)
        if rate > 0:
            produced = produce(settings, stream, rate=rate)
        outputs = reader.poll_until({p.idempotency_key for p in produced}, timeout=900)
        assert worker.proc is not None
        status = Path(f"/proc/{worker.proc.pid}/status").read_text()
        peak_rss_mb = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) / 1024
    finally:
        worker.stop()
        reader.close()
    decisions = [ds[0] for ds in outputs.decisions.values()]
    frames = sum(d["evidence"]["frames_scored"] for d in decisions)
    decided = sorted(d["decided_at"].timestamp() for d in decisions)
    span = max(decided[-1] - decided[0], 1e-9)
    by_key = {p.idempotency_key: p for p in produced}
    latencies = sorted(
        d["decided_at"].timestamp() - by_key[d["idempotency_key"]].timestamp_ms / 1000 for d in decisions
    )
    return {
        "events": len(decisions),
        "frames": frames,
        "frames_per_s": frames / span,
        "events_per_s": len(decisions) / span,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
        "peak_rss_mb": peak_rss_mb,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (about a minute)")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    args = parser.parse_args()
    n = args.events or (300 if args.quick else 1500)
    threads = args.threads or (os.cpu_count() or 1)
    model = train_tiny_checkpoint(Path.home() / ".cache" / "agegate" / "models" / "demo")
    settings = load_settings()
    codec = AvroCodec()
    frames = [
        EncodedFrame(f["source"]["data"], f["source"]["content_type"])
        for ev in synthetic_stream(min(n, 400), seed=3, frames_per_event=2)
        for f in codec.decode(ev.value).record.get("frames", [])
    ]
    rows: dict[str, dict[str, Any]] = {}
    rows["engine"] = {"frames_per_s": engine_rate(model, frames, settings.batch_max_frames, threads)}
    rows["worker"] = worker_run(model, n, batch=settings.batch_max_frames, rate=0, threads=threads, seed=5)
    rows["worker-b1"] = worker_run(model, n, batch=1, rate=0, threads=threads, seed=5)
    half = rows["worker"]["events_per_s"] / 2
    rows["latency@half"] = worker_run(model, n, batch=settings.batch_max_frames, rate=half, threads=threads, seed=6)
    result = {
        "machine": machine(),
        "events": n,
        "threads": threads,
        "batch_max_frames": settings.batch_max_frames,
        "batch_max_wait_ms": 25,
        "model": str(model),
        "rows": rows,
        "ratios": {
            "worker_over_engine": rows["worker"]["frames_per_s"] / rows["engine"]["frames_per_s"],
            "batched_over_b1": rows["worker"]["frames_per_s"] / rows["worker-b1"]["frames_per_s"],
        },
        "paced_rate_events_per_s": half,
    }
    device = "cuda" if result["machine"]["cuda"] else "cpu"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"worker-{device}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"machine: {result['machine']}")
    print(f"{'variant':14} {'frames/s':>10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'peak RSS MB':>12}")
    for name, row in rows.items():
        print(
            f"{name:14} {row['frames_per_s']:>10.0f} {row.get('events_per_s', float('nan')):>10.1f} "
            f"{row.get('p50_ms', float('nan')):>8.0f} {row.get('p99_ms', float('nan')):>8.0f} "
            f"{row.get('peak_rss_mb', float('nan')):>12.0f}"
        )
    print(
        f"worker / engine frames/s: {result['ratios']['worker_over_engine']:.2f}; "
        f"batched / batch-1: {result['ratios']['batched_over_b1']:.2f}; latency row paced at {half:.0f} events/s"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
