"""`agegate demo`: the main job end to end on local defaults.

Brings up the local Kafka and Redis, creates the topics, gets a model (AGEGATE_MODEL, or a small
one trained on synthetic faces and cached), starts the worker, produces a synthetic stream of
users whose true ages are known (with a share of bad events), waits until every event has a
decision or a dead letter, stops the worker with SIGTERM, and prints a summary.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from stream.config import load_settings
from stream.infra import infra_script
from stream.localrun import OutputReader, WorkerProcess, worker_env
from stream.produce import Produced, produce
from stream.topics import TopicAdmin

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
        from stream.loadgen import synthetic_stream

        stream = list(synthetic_stream(args.events, seed=seed, bad_share=args.bad_share, user_prefix="demo"))
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


def summary(
    produced: list[Produced],
    decisions: dict[str, list[dict[str, Any]]],
    dead: dict[str, list[dict[str, str]]],
    elapsed: float,
) -> str:
    actions = Counter(ds[0]["action"] for ds in decisions.values())
    reasons = Counter(hs[0]["reason"] for hs in dead.values())
    truth = {p.idempotency_key: p for p in produced}
    right = wrong_allow = wrong_restrict = verify = 0
    latencies = []
    for key, ds in decisions.items():
        d = ds[0]
        p = truth.get(key)
        if p is None:
            continue
        latencies.append(d["decided_at"].timestamp() - p.timestamp_ms / 1000)
        threshold = d["evidence"]["threshold"]
        if d["action"] == "REQUIRE_VERIFICATION" or threshold is None:
            verify += 1
        elif d["action"] == "ALLOW":
            right += p.event.true_age >= threshold
            wrong_allow += p.event.true_age < threshold
        else:
            right += p.event.true_age < threshold
            wrong_restrict += p.event.true_age >= threshold
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    decided = right + wrong_allow + wrong_restrict
    lines = [
        "",
        "== agegate demo summary",
        f"events produced      {len(produced)} ({sum(1 for p in produced if p.event.bad)} deliberately bad)",
        f"decisions            {len(decisions)}: " + ", ".join(f"{a} {n}" for a, n in sorted(actions.items())),
        f"dead letters         {len(dead)}: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none"),
        f"accounted for        {len(set(decisions) | set(dead))} of {len(produced)}",
        f"action right for the user's true age: {right}/{decided} of allow/restrict/block decisions"
        f" ({right / max(decided, 1):.1%}); under-age users allowed: {wrong_allow}; adults restricted or"
        f" blocked: {wrong_restrict}; sent to verification: {verify}",
        f"throughput           {len(produced) / max(elapsed, 1e-9):.1f} events/s (producer paced)",
        f"event-to-decision    p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms",
    ]
    return "\n".join(lines)
