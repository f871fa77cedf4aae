"""Belief updates per second against a real Redis: pipelined micro-batches vs one call per user.

Next to them, redis-benchmark's own rate for a trivial EVAL on the same server in the same run, so
the numbers can be read against what this Redis and this machine can do at all.

    REDIS_URL=redis://127.0.0.1:36379/0 python bench/belief.py [--quick]

Then what the client costs: CPU of this process per user, pipelined batches of 64 users (the
worker's batch), for the belief update, the hysteresis write (one script call per user) beside the
two commands it replaced (HSET + PEXPIRE NX per surface), and a PING per user as the client's floor:
redis-py's cost is mostly per command and per argument, and it is the worker's event loop that pays.

Prints a table and writes bench/results/belief.json. Keys use a throwaway prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from machine import cpu_model  # bench/ is on sys.path when run as a script

from stream.adapters.belief_store import BeliefStore
from stream.core.belief import Evidence
from stream.core.belief_updates import SurfaceKey
from stream.core.policy import Action

RESULTS = Path(__file__).resolve().parent / "results" / "belief.json"
NOW = 1_750_000_000.0


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform()}


def batches(n_users: int, batch_size: int, rounds: int, per_user: int) -> list[dict[str, list[Evidence]]]:
    out = []
    for r in range(rounds):
        for start in range(0, n_users, batch_size):
            out.append(
                {
                    f"u{i}": [
                        Evidence(f"r{r}-u{i}-{k}", NOW + r * 60 + k, 20.0 + (i % 30), 2.5) for k in range(per_user)
                    ]
                    for i in range(start, min(start + batch_size, n_users))
                }
            )
    return out


async def run_pipelined(store: BeliefStore, work: list[dict[str, list[Evidence]]]) -> float:
    t0 = time.perf_counter()
    for batch in work:
        await store.apply(batch, now=NOW + 3600, model_version="bench", floor=2.0)
    return time.perf_counter() - t0


async def run_per_user(store: BeliefStore, work: list[dict[str, list[Evidence]]]) -> float:
    t0 = time.perf_counter()
    for batch in work:
        for user, evs in batch.items():
            await store.apply({user: evs}, now=NOW + 3600, model_version="bench", floor=2.0)
    return time.perf_counter() - t0


CPU_BATCH = 64


async def _two_commands(client: aioredis.Redis, store: BeliefStore, actions: dict[SurfaceKey, Action]) -> None:
    """The hysteresis write before it went through the script: HSET and PEXPIRE NX per surface."""
    async with client.pipeline(transaction=False) as pipe:
        for key, action in actions.items():
            pipe.hset(store.belief_key(key.user_id), key.field, action.value)
            pipe.pexpire(store.belief_key(key.user_id), 3_600_000, nx=True)
        await pipe.execute()


async def _pings(client: aioredis.Redis, n: int) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for _ in range(n):
            pipe.execute_command("PING")
        await pipe.execute()


async def client_cpu(client: aioredis.Redis, store: BeliefStore, users: int, repeats: int) -> dict[str, float]:
    """Microseconds of this process's CPU per user, by row: the median of `repeats`, rows alternating."""
    batches = [[f"c{i}" for i in range(s, min(s + CPU_BATCH, users))] for s in range(0, users, CPU_BATCH)]
    surface = "adult_content"

    def acts(batch: list[str], action: Action) -> dict[SurfaceKey, Action]:
        return {SurfaceKey(u, "GB", surface, "bench"): action for u in batch}

    rows: dict[str, Any] = {
        "apply: one script call per user": lambda b, r: store.apply(
            {u: [Evidence(f"{u}-{r}", NOW + r, 20.0, 2.5)] for u in b}, now=NOW + 3600, model_version="bench", floor=2.0
        ),
        "record_actions: one script call per user": lambda b, r: store.record_actions(
            acts(b, Action.ALLOW if r % 2 else Action.RESTRICT)
        ),
        "HSET + PEXPIRE NX per user (before)": lambda b, r: _two_commands(
            client, store, acts(b, Action.ALLOW if r % 2 else Action.RESTRICT)
        ),
        "PING per user (the client's floor)": lambda b, r: _pings(client, len(b)),
    }
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(repeats):
        for name, run in rows.items():
            started = time.process_time()
            for batch in batches:
                await run(batch, r)
            samples[name].append((time.process_time() - started) * 1e6 / users)
    return {name: statistics.median(v) for name, v in samples.items()}


def redis_benchmark(url: str, requests: int) -> dict[str, Any]:
    """redis-benchmark's rate for EVAL of a trivial script: one client, then pipelined (-P 64)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {"error": "redis-benchmark not found"}
    parts = urlsplit(url)
    base = [exe, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "-n", str(requests), "-q"]
    if parts.password:
        base += ["-a", parts.password]
    out: dict[str, Any] = {}
    for label, extra in (
        ("1 client, no pipeline", ["-c", "1"]),
        ("1 client, -P 64", ["-c", "1", "-P", "64"]),
        ("50 clients, no pipeline", ["-c", "50"]),
    ):
        res = subprocess.run([*base, *extra, "eval", "return 1", "0"], capture_output=True, text=True, timeout=120)
        m = re.search(r"([\d.]+) requests per second", res.stdout)
        out[label] = float(m.group(1)) if m else None
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (seconds), for CI and shared machines")
    args = ap.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:36379/0")
    n_users, batch_size, rounds, per_user = (2000, 200, 2, 1) if args.quick else (10000, 500, 3, 1)
    client = aioredis.Redis.from_url(url)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    store = BeliefStore(client, prefix=prefix, half_life_s=365 * 86400.0, ttl_s=3600.0)
    server = await client.info("server")
    try:
        work = batches(n_users, batch_size, rounds, per_user)
        updates = sum(len(b) for b in work)
        await store.apply(work[0], now=NOW, model_version="warmup", floor=2.0)  # load the script, warm connections
        store_p = BeliefStore(client, prefix=prefix + "p", half_life_s=365 * 86400.0, ttl_s=3600.0)
        store_s = BeliefStore(client, prefix=prefix + "s", half_life_s=365 * 86400.0, ttl_s=3600.0)
        t_pipe = await run_pipelined(store_p, work)
        t_single = await run_per_user(store_s, work)
        rb = redis_benchmark(url, 20000 if args.quick else 100000)
        cpu = await client_cpu(client, store, users=1280 if args.quick else 6400, repeats=3 if args.quick else 5)
    finally:
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
        await client.aclose()
    rows = [
        (f"BeliefStore.apply, pipelined batches of {batch_size} users", updates / t_pipe),
        ("BeliefStore.apply, one call per user", updates / t_single),
    ] + [(f"redis-benchmark EVAL 'return 1' ({k})", v) for k, v in rb.items() if isinstance(v, float)]
    width = max(len(r[0]) for r in rows)
    print(
        f"Redis {server.get('redis_version')} at {urlsplit(url).hostname}:{urlsplit(url).port}; "
        f"{machine()['cpu']}, {machine()['cores']} cores; {updates} user updates per mode"
    )
    print(f"{'what':<{width}}  {'ops/s':>10}")
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>10,.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": machine(),
                "redis_version": server.get("redis_version"),
                "quick": args.quick,
                "users": n_users,
                "batch_size": batch_size,
                "rounds": rounds,
                "evidence_per_update": per_user,
                "updates_per_mode": updates,
                "pipelined_updates_per_s": updates / t_pipe,
                "per_user_updates_per_s": updates / t_single,
                "redis_benchmark_eval_trivial_ops_per_s": rb,
                "client_cpu_us_per_user": cpu,
                "client_cpu_batch": CPU_BATCH,
                "note": "one evidence per user update; redis-benchmark ran against the same server in the same run",
            },
            indent=2,
        )
        + "\n"
    )
    cpu_width = max(len(k) for k in cpu)
    print(f"\nclient CPU per user, pipelined batches of {CPU_BATCH} users (median of rows alternating)")
    print(f"{'what':<{cpu_width}}  {'us/user':>8}  {'/ PING':>7}")
    ping = cpu["PING per user (the client's floor)"]
    for name, us in cpu.items():
        print(f"{name:<{cpu_width}}  {us:>8.1f}  {us / ping:>7.2f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
