"""`agegate demo`: the main job end to end on local defaults.

Brings up the local Kafka and Redis, creates the topics, gets a model (AGEGATE_MODEL, or a small
one trained on synthetic faces and cached), starts the worker, produces a synthetic stream of
users whose true ages are known (most near a threshold, each with a persistent look-older/younger
offset, some uploading tens of times, and a share of bad events), waits until every event has a
decision or a dead letter, stops the worker with SIGTERM, and prints per threshold who was
ALLOWed and who was burdened.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import registry_from_settings
from stream.adapters.topics import TopicAdmin
from stream.config import load_settings
from stream.tools.infra import infra_script
from stream.tools.localrun import OutputReader, WorkerProcess, worker_env
from stream.tools.produce import Produced, produce

CACHE = Path.home() / ".cache" / "agegate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=400, help="synthetic events to produce")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--bad-share", type=float, default=0.05, help="share of deliberately bad events")
    parser.add_argument("--seed", type=int, default=None, help="stream seed (default: random)")
    parser.add_argument("--no-infra", action="store_true", help="do not run deploy/local/infra.sh up")


def demo_model() -> Path:
    settings = load_settings()
    if settings.model_checkpoint:
        return Path(settings.model_checkpoint)
    from model.testing import train_tiny_checkpoint

    print("model: none configured (AGEGATE_MODEL); training a small one on synthetic faces (cached)...")
    return train_tiny_checkpoint(CACHE / "models" / "demo")


def run(args: argparse.Namespace) -> int:
    if not args.no_infra and subprocess.call(["bash", str(infra_script()), "up"]) != 0:
        return 1
    settings = load_settings()
    for name, outcome in TopicAdmin(settings).create():
        print(f"topic {name}: {outcome}")
    model = demo_model()
    print(f"model: {model}")
    log_path = CACHE / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = worker_env(settings, model=model, redis_url=settings.redis_url, redis_prefix=settings.redis_key_prefix)
    worker = WorkerProcess(env, log_path).start()
    reader = OutputReader(settings)
    try:
        worker.wait_ready(timeout=180)
        print(f"worker: ready ({worker.url}/readyz); log {log_path}")
        seed = args.seed if args.seed is not None else uuid.uuid4().int % 100_000
        from stream.tools.loadgen import synthetic_stream

        codec = AvroCodec(registry_from_settings(settings))  # the configured registry's ids, like the worker
        stream = list(
            synthetic_stream(args.events, seed=seed, bad_share=args.bad_share, user_prefix="demo", codec=codec)
        )
        started = time.monotonic()
        produced = produce(settings, stream, rate=args.rate)
        outputs = reader.poll_until({p.idempotency_key for p in produced}, timeout=300)
        elapsed = time.monotonic() - started
    finally:
        worker.stop()
        reader.close()
    # The default topics may hold earlier runs' events: summarise this run's alone.
    keys = {p.idempotency_key for p in produced}
    decisions = {k: v for k, v in outputs.decisions.items() if k in keys}
    dead = {k: v for k, v in outputs.dead_letters.items() if k in keys}
    print(summary(produced, decisions, dead, elapsed))
    return 1 if keys - outputs.accounted() else 0


ADULT_NEAR_YEARS = 3.0  # adults within this many years above a threshold are the ones a buffer burdens
LOOKS_OLDER_YEARS = 2.0  # a minor whose photos look this much older is the hard case for ALLOW


@dataclass
class _Cell:
    n: int = 0
    allow: int = 0
    verify: int = 0
    restrict: int = 0  # RESTRICT or BLOCK

    def add(self, action: str) -> None:
        self.n += 1
        self.allow += action == "ALLOW"
        self.verify += action == "REQUIRE_VERIFICATION"
        self.restrict += action in ("RESTRICT", "BLOCK")

    def share(self, k: int) -> str:
        return f"{k / self.n:6.1%}" if self.n else "     -"


def threshold_table(rows: list[tuple[float, float, float, str]]) -> list[str]:
    """Per threshold: (threshold, true age, look offset, action) rows -> who was allowed, who was burdened.

    Minors allowed is the worst outcome; adults near the threshold sent to verification or restricted
    is the price. Each row counts decisions (a user deciding many times counts each time).
    """
    cells: dict[float, dict[str, _Cell]] = defaultdict(lambda: defaultdict(_Cell))
    for threshold, age, look, action in rows:
        by = cells[threshold]
        if age < threshold:
            by["minor"].add(action)
            if look >= LOOKS_OLDER_YEARS:
                by["minor_looks_older"].add(action)
        elif age < threshold + ADULT_NEAR_YEARS:
            by["near"].add(action)
        else:
            by["well"].add(action)
    out = [
        f"{'threshold':>9} | {'minors':>6} {'ALLOWed':>14} | {'look 2y+ older':>14} {'ALLOWed':>7} | "
        f"{'adults T..T+3':>13} {'ALLOW':>6} {'verify':>6} {'restr.':>6} | "
        f"{'adults T+3+':>11} {'ALLOW':>6} {'verify':>6} {'restr.':>6}",
    ]
    for threshold in sorted(cells):
        by = cells[threshold]
        m, lo, near, well = by["minor"], by["minor_looks_older"], by["near"], by["well"]
        out.append(
            f"{threshold:>8.0f}+ | {m.n:>6} {m.allow:>6} ({m.share(m.allow)}) | {lo.n:>14} {lo.allow:>7} | "
            f"{near.n:>13} {near.share(near.allow)} {near.share(near.verify)} {near.share(near.restrict)} | "
            f"{well.n:>11} {well.share(well.allow)} {well.share(well.verify)} {well.share(well.restrict)}"
        )
    return out


def summary(
    produced: list[Produced],
    decisions: dict[str, list[dict[str, Any]]],
    dead: dict[str, list[dict[str, str]]],
    elapsed: float,
) -> str:
    actions = Counter(ds[0]["action"] for ds in decisions.values())
    reasons = Counter(hs[0]["reason"] for hs in dead.values())
    truth = {p.idempotency_key: p for p in produced}
    rows: list[tuple[float, float, float, str]] = []
    latencies = []
    for key, ds in decisions.items():
        d = ds[0]
        p = truth.get(key)
        if p is None:
            continue
        latencies.append(d["decided_at"].timestamp() - p.timestamp_ms / 1000)
        if d["evidence"]["threshold"] is not None:
            rows.append((float(d["evidence"]["threshold"]), p.event.true_age, p.event.look, d["action"]))
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    minors_allowed = sum(1 for t, age, _, a in rows if a == "ALLOW" and age < t)
    lines = [
        "",
        "== agegate demo summary",
        f"events produced      {len(produced)} ({sum(1 for p in produced if p.event.bad)} deliberately bad), "
        f"{len({p.event.user_id for p in produced})} users aged 10-60, most near a threshold, each with a "
        "persistent look-older/younger offset",
        f"decisions            {len(decisions)}: " + ", ".join(f"{a} {n}" for a, n in sorted(actions.items())),
        f"dead letters         {len(dead)}: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none"),
        f"accounted for        {len(set(decisions) | set(dead))} of {len(produced)}",
        f"minors ALLOWed       {minors_allowed} of {sum(1 for t, age, _, _ in rows if age < t)} decisions about "
        "users under the surface's threshold",
        "by threshold (decisions; the share of each group given each action):",
        *("  " + line for line in threshold_table(rows)),
        f"throughput           {len(produced) / max(elapsed, 1e-9):.1f} events/s (producer paced)",
        f"event-to-decision    p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms",
    ]
    return "\n".join(lines)
