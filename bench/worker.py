"""Worker benchmark: end-to-end frames/s against the inference engine alone, same model, same run.

Variants side by side (ratios matter more than absolutes on a shared machine):
  engine       InferenceEngine.score on the same frames in batches of batch_max_frames, with the
               worker's inference threads (median of 5 passes)
  engine-all   the same with every core (--threads): the engine given the whole machine
  worker       `agegate worker` draining a backlog, micro-batching on (default settings: one decoder
               process)
  worker-b1    the same with micro-batching off (AGEGATE_BATCH_MAX_FRAMES=1)
  latency      p50/p99 event-to-decision with the producer paced at half the worker's maximum
  latency@half wait25  the same with each forward pass waiting up to 25 ms for more frames once the
               model is free (AGEGATE_INFERENCE_MAX_WAIT_MS=25, the worker before 0 became the default)
  engine-noop  the engine with its forward pass replaced by a no-op (bench/noop_infer.py): a stand-in
               for a GPU, where inference is nearly free and the worker's own cost is what remains
  worker-noop  the worker with the same no-op forward pass (backlog)
  worker dpN, worker-noop dpN  with --decode-processes N: those rows with frames decoded in N
               processes (AGEGATE_DECODE_PROCESSES; 0 decodes in the inference thread)
  worker switchS, worker-noop switchS  with --switch-ms S: those rows with the interpreter's switch
               interval at S ms (AGEGATE_SWITCH_INTERVAL_MS; the default is 1, Python's own 5)
  worker spin, worker-noop spin  with --omp-spin: those rows with torch's OpenMP threads spinning
               after each parallel region as libgomp does by default (GOMP_SPINCOUNT=300000); the
               worker's default is OMP_WAIT_POLICY=PASSIVE (stream/runners/interpreter.py)
  soak         with --duration S: the worker paced at half its maximum for S seconds; resident memory
               (VmRSS) sampled at start, middle and end, to show it stays flat
Every row uses new topics, and a broker's first seconds on a new topic are slow: with no worker at
all, a paced producer's acknowledgements took up to 200 ms in the first 8 s of a new topic and at
most 30 ms on the same topic afterwards (measured here; a deployed worker's topics are long-lived).
Paced rows therefore run at least 30 s, and `p99 warm` leaves out events sent in a row's first
10 s; `p99 ms` keeps them. The load generator stands for a platform's long-running producers: it
is warm before pacing starts and lingers 5 ms (stream/tools/produce.py). Peak RSS of the
worker process (VmHWM) is reported too, and for each worker row the CPU each
process spent per event while it ran (worker, Kafka broker, Redis, this benchmark): on a small
machine they share the cores, and that budget bounds what any worker could reach. Outputs are read
after the worker has written them all (the topic's end offsets are polled), so reading them takes
no CPU from the run; latencies use the decisions' own `decided_at`. Writes
bench/results/worker-<device>.json.

    python bench/worker.py [--quick] [--events N] [--variants engine,worker,...] [--duration S]
                           [--threads N] [--worker-threads N] [--decode-processes N] [--switch-ms S]
                           [--omp-spin]

Needs the local Kafka and Redis (deploy/local/infra.sh up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from confluent_kafka import Consumer, TopicPartition

from model.engine import EncodedFrame, InferenceEngine
from model.testing import train_tiny_checkpoint
from stream.adapters.codec import AvroCodec
from stream.adapters.topics import TopicAdmin, topic_name
from stream.config import Settings, load_settings
from stream.pipeline.assemble import inference_threads
from stream.tools.loadgen import synthetic_stream
from stream.tools.localrun import OutputReader, WorkerProcess, worker_env
from stream.tools.produce import produce

RESULTS = Path(__file__).resolve().parent / "results"
# `p99 warm`: events sent this long after the first one (see the docstring); paced rows last at least
# PACED_ROW_S so that most of their events are warm.
WARM_AFTER_S = 10.0
PACED_ROW_S = 30.0


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


RUN_SETTINGS: list[Settings] = []  # every worker run's topics, deleted once the benchmark ends


def drop_topics(runs: list[Settings]) -> None:
    """Delete the runs' topics once all rows are measured: left behind, every run adds ~80 partitions
    and the local broker slows; deleted between rows, the broker's deferred file deletion (a minute
    later) would take CPU from the next row."""
    from confluent_kafka.admin import AdminClient

    if not runs:
        return
    admin = AdminClient(runs[0].kafka_client_config())  # kept alive until its futures resolve
    prefixes = tuple(s.topic_prefix for s in runs)
    names = [n for n in admin.list_topics(timeout=10).topics if n.startswith(prefixes)]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else ():
        future.result(timeout=60)


REPO = Path(__file__).resolve().parent.parent
VARIANTS = (
    "engine",
    "engine-all",
    "worker",
    "worker-b1",
    "latency@half",
    "latency@half wait25",
    "engine-noop",
    "worker-noop",
)


def engine_rate(
    model: Path, frames: list[EncodedFrame], batch: int, threads: int, *, noop: bool = False
) -> dict[str, float]:
    """Frames/s of the engine alone (the median of 5 passes: one pass is noisy on a shared machine),
    and the CPU it spent per frame over those passes (this process and its decoders)."""
    with contextlib.closing(InferenceEngine.from_checkpoint(model, device="auto", threads=threads)) as engine:
        return _engine_passes(engine, frames, batch, noop=noop)


def _engine_passes(engine: InferenceEngine, frames: list[EncodedFrame], batch: int, *, noop: bool) -> dict[str, float]:
    if noop:
        if str(REPO) not in sys.path:  # run as a plain script: the checkout is not on the path
            sys.path.insert(0, str(REPO))
        from bench.noop_infer import _noop_infer

        engine.infer = _noop_infer.__get__(engine)  # type: ignore[method-assign]
    engine.score(frames[:batch])  # warm-up (it also starts the decode processes, counted below)
    rates = []
    cpu_before = _tree_cpu_s(os.getpid())
    for _ in range(5):
        started = time.perf_counter()
        for i in range(0, len(frames), batch):
            engine.score(frames[i : i + batch])
        rates.append(len(frames) / (time.perf_counter() - started))
    cpu_ms_per_frame = (_tree_cpu_s(os.getpid()) - cpu_before) * 1000 / (5 * len(frames))
    return {"frames_per_s": statistics.median(rates), "cpu_ms_per_frame": cpu_ms_per_frame}


def cpu_ceilings(rows: dict[str, dict[str, Any]], cores: int) -> dict[str, float]:
    """The most the worker rows could reach on this machine at the CPU cost per frame measured.

    All the cores busy, nothing idle, no cost of sharing them: `cores` seconds of CPU a second over
    the CPU one frame costs end to end. The no-op worker's frame costs what the worker, broker and
    Redis spent per frame in its row (decode included); the model worker's adds the engine's
    inference cost per frame (engine minus engine-noop, both decoding the same frames). Sharing
    the cores only adds cost (a forward pass beside the event loop is slower than alone), so a
    ceiling is an upper bound: a target above it needs less work per event, not better overlap.
    Returned as ratios over the rows' engines, next to the measured ratios.
    """
    noop, engine_noop, engine = rows.get("worker-noop"), rows.get("engine-noop"), rows.get("engine")
    if not noop or not engine_noop or "cpu_ms_per_frame" not in engine_noop:
        return {}
    per_event = sum(noop.get(f"cpu_ms_per_event_{owner}", 0.0) for owner in ("worker", "kafka", "redis"))
    worker_ms = per_event * noop["events"] / noop["frames"]
    budget_ms = cores * 1000.0
    out = {"worker-noop_ceiling_over_engine-noop": budget_ms / worker_ms / engine_noop["frames_per_s"]}
    if engine and "cpu_ms_per_frame" in engine:
        inference_ms = max(0.0, engine["cpu_ms_per_frame"] - engine_noop["cpu_ms_per_frame"])
        out["worker_ceiling_over_engine"] = budget_ms / (worker_ms + inference_ms) / engine["frames_per_s"]
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _service_pids(settings: Settings) -> dict[str, int]:
    """The local Kafka broker and Redis (deploy/local), found by their command lines; absent if not found."""
    redis = urlparse(settings.redis_url)
    found = {}
    for name, pattern in (("kafka", "kafka.Kafka"), ("redis", f"redis-server {redis.hostname}:{redis.port}")):
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        if out:
            found[name] = int(out[0])
    return found


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and every live descendant (the worker's decode processes, under its
    fork server): work moved to a child must still be counted as the worker's."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _cpu_s(p)
        todo.extend(children.get(p, ()))
    return total


class CpuMeter:
    """CPU seconds per process (with its descendants) over a window: where a small machine's cores went."""

    def __init__(self, pids: dict[str, int], *, with_descendants: frozenset[str] = frozenset({"worker"})) -> None:
        self.pids = pids
        self.with_descendants = with_descendants
        self.start = {name: self._cpu(name) for name in pids}

    def _cpu(self, name: str) -> float:
        pid = self.pids[name]
        return _tree_cpu_s(pid) if name in self.with_descendants else _cpu_s(pid)

    def per_event_ms(self, events: int) -> dict[str, float]:
        return {
            f"cpu_ms_per_event_{name}": (self._cpu(name) - self.start[name]) * 1000 / max(events, 1)
            for name in self.pids
        }


def wait_for_outputs(settings: Settings, n: int, timeout: float) -> None:
    """Until the decisions topic holds `n` messages (one per valid event): polls end offsets only,
    so the benchmark takes no CPU from the worker while it runs."""
    topic = topic_name("decisions", settings)
    consumer = Consumer(settings.kafka_client_config() | {"group.id": f"bench-watch-{uuid.uuid4().hex[:6]}"})
    deadline = time.monotonic() + timeout
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        while time.monotonic() < deadline:
            ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions]
            if sum(ends) >= n:
                return
            time.sleep(0.2)  # polling a condition (end offsets), not standing in for synchronisation
    finally:
        consumer.close()
    raise TimeoutError(f"the worker wrote fewer than {n} decisions within {timeout:.0f}s")


def _rss_mb(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith(field)).split()[1]) / 1024


class RssSampler:
    """Samples the worker's resident memory once a second while it runs (for the soak row)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                self.samples.append((time.monotonic() - started, _rss_mb(self.pid, "VmRSS")))
            except (OSError, StopIteration):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def start_middle_end(self) -> dict[str, float]:
        if not self.samples:
            return {}
        s = self.samples
        return {"rss_start_mb": s[0][1], "rss_middle_mb": s[len(s) // 2][1], "rss_end_mb": s[-1][1]}


def worker_run(
    model: Path,
    n_events: int,
    *,
    batch: int,
    rate: float,
    threads: int,
    seed: int,
    noop: bool = False,
    sample_rss: bool = False,
    decode_processes: int | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Backlog (rate 0: produced before the worker starts) or paced (rate > 0: while it runs).
    `threads` 0 leaves the worker its own default (stream/pipeline/assemble.py inference_threads),
    as `decode_processes` None does; `env` sets more of the worker's settings."""
    settings = fresh_settings(f"b{batch}")
    if rate > 0:
        n_events = max(n_events, int(rate * PACED_ROW_S))
    stream = list(synthetic_stream(n_events, seed=seed, bad_share=0.0, frames_per_event=2))
    noop_env = {"AGEGATE_BENCH_NOOP_INFER": "1", "PYTHONPATH": f"{REPO / 'bench' / 'noop'}:{REPO}"} if noop else {}
    worker_environ = worker_env(
        settings,
        model=model,
        redis_url=settings.redis_url,
        redis_prefix=f"bench{uuid.uuid4().hex[:6]}",
        **{
            "AGEGATE_BATCH_MAX_FRAMES": str(batch),
            "AGEGATE_INFERENCE_THREADS": str(threads),
            "AGEGATE_BATCH_MAX_WAIT_MS": "25",
            **({} if decode_processes is None else {"AGEGATE_DECODE_PROCESSES": str(decode_processes)}),
            **noop_env,
            **(env or {}),  # last: a row's own settings override the defaults above
        },
    )
    log = Path("/tmp") / f"agegate-bench-worker-{uuid.uuid4().hex[:6]}.log"
    produced = produce(settings, stream) if rate == 0 else []
    worker = WorkerProcess(worker_environ, log).start()
    reader = OutputReader(settings)
    rss: dict[str, float] = {}
    try:
        worker.wait_ready(timeout=180)
        assert worker.proc is not None
        meter = CpuMeter({"worker": worker.proc.pid, **_service_pids(settings), "bench": os.getpid()})
        with RssSampler(worker.proc.pid) as sampler:
            if rate > 0:
                produced = produce(settings, stream, rate=rate)
            wait_for_outputs(settings, len(produced), timeout=900)
        cpu = meter.per_event_ms(len(produced))
        if sample_rss:
            rss = sampler.start_middle_end()
        peak_rss_mb = _rss_mb(worker.proc.pid, "VmHWM")
        # Reading decodes every output in this process: a 10-minute soak's 200,000 took longer than a
        # fixed 300 s (reading was quadratic then), and its latencies covered only the first quarter.
        keys = {p.idempotency_key for p in produced}
        outputs = reader.poll_until(keys, timeout=max(300.0, len(produced) / 50))
        missing = len(keys - outputs.accounted())
        if missing > 0:
            raise RuntimeError(f"{missing} of {len(produced)} decisions were not read back: the row would be partial")
    finally:
        worker.stop()
        reader.close()
        RUN_SETTINGS.append(settings)
    decisions = [ds[0] for ds in outputs.decisions.values()]
    frames = sum(d["evidence"]["frames_scored"] for d in decisions)
    decided = sorted(d["decided_at"].timestamp() for d in decisions)
    span = max(decided[-1] - decided[0], 1e-9)
    by_key = {p.idempotency_key: p for p in produced}
    sent_and_latency = sorted(
        (by_key[d["idempotency_key"]].timestamp_ms / 1000, d["decided_at"].timestamp()) for d in decisions
    )
    latencies = sorted(decided - sent for sent, decided in sent_and_latency)
    # The first seconds after a start hold the cold path (the first fetch, first forward passes) and
    # the backlog it leaves; reported apart, never instead of the whole run.
    first = sent_and_latency[0][0]
    warm = sorted(decided - sent for sent, decided in sent_and_latency if sent - first >= WARM_AFTER_S)
    warm = warm or [float("nan")]
    return {
        "events": len(decisions),
        "frames": frames,
        "frames_per_s": frames / span,
        "events_per_s": len(decisions) / span,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _p99(latencies) * 1000,
        "p99_warm_ms": _p99(warm) * 1000,
        "peak_rss_mb": peak_rss_mb,
        **cpu,
        **rss,
    }


def _p99(sorted_values: list[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(0.99 * len(sorted_values)))]


def print_table(result: dict[str, Any]) -> None:
    print(f"machine: {result['machine']}")
    print(
        f"{'variant':20} {'frames/s':>10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99 warm':>9} "
        f"{'peak RSS MB':>12}"
    )
    for name, row in result["rows"].items():
        print(
            f"{name:20} {row['frames_per_s']:>10.0f} {row.get('events_per_s', float('nan')):>10.1f} "
            f"{row.get('p50_ms', float('nan')):>8.0f} {row.get('p99_ms', float('nan')):>8.0f} "
            f"{row.get('p99_warm_ms', float('nan')):>9.0f} "
            f"{row.get('peak_rss_mb', float('nan')):>12.0f}"
        )
    cpu_rows = {
        name: row for name, row in result["rows"].items() if any(k.startswith("cpu_ms_per_event_") for k in row)
    }
    if cpu_rows:
        owners = sorted(
            {k.removeprefix("cpu_ms_per_event_") for row in cpu_rows.values() for k in row if k.startswith("cpu_ms_")}
        )
        print(f"CPU ms per event while the worker ran ({result['machine']['cores']} cores): " + ", ".join(owners))
        for name, row in cpu_rows.items():
            cells = " ".join(f"{owner}={row.get('cpu_ms_per_event_' + owner, float('nan')):.2f}" for owner in owners)
            print(f"  {name:20} {cells}")
    for name, row in result["rows"].items():
        if "cpu_ms_per_frame" in row:
            print(f"  {name:20} CPU ms per frame (this process and its decoders): {row['cpu_ms_per_frame']:.3f}")
    for name, value in result["ratios"].items():
        print(f"{name.replace('_over_', ' / ')} frames/s: {value:.2f}")
    if any("_ceiling_" in name for name in result["ratios"]):
        print("ceiling: every core busy at the CPU per frame measured above, nothing lost to sharing (cpu_ceilings)")
    print(
        f"engine, engine-noop and the worker rows: {result['worker_threads']} inference thread(s); "
        f"engine-all: {result['threads']}"
    )
    print(f"latency and soak rows paced at {result['paced_rate_events_per_s']:.0f} events/s")
    if "soak" in result["rows"]:
        soak = result["rows"]["soak"]
        print(
            f"soak RSS MB start/middle/end: {soak.get('rss_start_mb', float('nan')):.0f} / "
            f"{soak.get('rss_middle_mb', float('nan')):.0f} / {soak.get('rss_end_mb', float('nan')):.0f}"
        )


def main() -> int:
    try:
        return measure()
    finally:
        drop_topics(RUN_SETTINGS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (about a minute)")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="the engine-all row's threads (0: all cores)")
    parser.add_argument(
        "--worker-threads", type=int, default=0, help="the worker's inference threads (0: its default, every core)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--duration", type=float, default=0.0, help="paced soak run seconds (0: none)")
    parser.add_argument(
        "--decode-processes",
        type=int,
        default=None,
        help="also the worker rows with N decoder processes (`... dpN`; 0: in the inference thread)",
    )
    parser.add_argument(
        "--switch-ms",
        type=float,
        default=None,
        help="also the worker rows with this interpreter switch interval (`... switchS`, AGEGATE_SWITCH_INTERVAL_MS)",
    )
    parser.add_argument(
        "--omp-spin",
        action="store_true",
        help="also the worker rows with OpenMP threads spinning as libgomp's default does (`... spin`)",
    )
    return parser


def alternatives_of(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """Rows beside the defaults: the worker and worker-noop rows again with one setting changed."""
    alternatives: list[tuple[str, dict[str, Any]]] = []
    if args.decode_processes is not None:
        alternatives.append((f"dp{args.decode_processes}", {"decode_processes": args.decode_processes}))
    if args.switch_ms is not None:
        alternatives.append((f"switch{args.switch_ms:g}", {"env": {"AGEGATE_SWITCH_INTERVAL_MS": str(args.switch_ms)}}))
    if args.omp_spin:  # libgomp's own spin when OMP_WAIT_POLICY is unset; it overrides PASSIVE
        alternatives.append(("spin", {"env": {"GOMP_SPINCOUNT": "300000"}}))
    return alternatives


def measure() -> int:
    args = _parser().parse_args()
    variants = {v.strip() for v in args.variants.split(",") if v.strip()}
    n = args.events or (300 if args.quick else 1500)
    threads = args.threads or (os.cpu_count() or 1)
    worker_threads = args.worker_threads or inference_threads(load_settings())
    model = train_tiny_checkpoint(Path.home() / ".cache" / "agegate" / "models" / "demo")
    settings = load_settings()
    codec = AvroCodec()
    frames = [
        EncodedFrame(f["source"]["data"], f["source"]["content_type"])
        for ev in synthetic_stream(min(n, 400), seed=3, frames_per_event=2)
        for f in codec.decode(ev.value).record.get("frames", [])
    ]
    rows: dict[str, dict[str, Any]] = {}
    batch = settings.batch_max_frames
    if "engine" in variants:
        rows["engine"] = engine_rate(model, frames, batch, worker_threads)
    if "engine-all" in variants:
        rows["engine-all"] = engine_rate(model, frames, batch, threads)
    if variants & {"worker", "latency@half", "latency@half wait25"} or args.duration:
        rows["worker"] = worker_run(model, n, batch=batch, rate=0, threads=worker_threads, seed=5)
    if "worker-b1" in variants:
        rows["worker-b1"] = worker_run(model, n, batch=1, rate=0, threads=worker_threads, seed=5)
    half = rows["worker"]["events_per_s"] / 2 if "worker" in rows else 0.0
    if "latency@half" in variants:
        rows["latency@half"] = worker_run(model, n, batch=batch, rate=half, threads=worker_threads, seed=6)
    if "latency@half wait25" in variants:
        wait25 = {"AGEGATE_INFERENCE_MAX_WAIT_MS": "25"}
        rows["latency@half wait25"] = worker_run(
            model, n, batch=batch, rate=half, threads=worker_threads, seed=6, env=wait25
        )
    if "engine-noop" in variants:
        rows["engine-noop"] = engine_rate(model, frames, batch, worker_threads, noop=True)
    if "worker-noop" in variants:
        rows["worker-noop"] = worker_run(
            model, max(n, 1000), batch=batch, rate=0, threads=worker_threads, seed=7, noop=True
        )
    alternatives = alternatives_of(args)
    for suffix, changed in alternatives:
        if "worker" in variants:
            rows[f"worker {suffix}"] = worker_run(
                model, n, batch=batch, rate=0, threads=worker_threads, seed=5, **changed
            )
        if "worker-noop" in variants:
            rows[f"worker-noop {suffix}"] = worker_run(
                model, max(n, 1000), batch=batch, rate=0, threads=worker_threads, seed=7, noop=True, **changed
            )
    if args.duration:
        rows["soak"] = worker_run(
            model, int(half * args.duration), batch=batch, rate=half, threads=worker_threads, seed=8, sample_rss=True
        )
    ratios: dict[str, float] = {}
    alternative_rows = [
        pair
        for suffix, _ in alternatives
        for pair in ((f"worker {suffix}", "engine"), (f"worker-noop {suffix}", "engine-noop"))
    ]
    for num, den in (
        ("worker", "engine"),
        ("worker", "engine-all"),
        ("worker", "worker-b1"),
        ("worker-noop", "engine-noop"),
        *alternative_rows,
    ):
        if num in rows and den in rows:
            ratios[f"{num}_over_{den}"] = rows[num]["frames_per_s"] / rows[den]["frames_per_s"]
    host = machine()
    ratios |= cpu_ceilings(rows, host["cores"])
    result: dict[str, Any] = {
        "machine": host,
        "events": n,
        "threads": threads,
        "worker_threads": worker_threads,
        "batch_max_frames": settings.batch_max_frames,
        "batch_max_wait_ms": 25,
        "model": str(model),
        "rows": rows,
        "ratios": ratios,
        "paced_rate_events_per_s": half,
    }
    device = "cuda" if host["cuda"] else "cpu"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"worker-{device}.json"
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
