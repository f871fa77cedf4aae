"""Why the worker lets idle OpenMP threads sleep: libgomp's default spin beside an event loop, in one run.

    python bench/omp_wait.py [--seconds 8] [--repeats 3] [--batch 64] [--size 64]

torch's CPU thread pool is libgomp's. With OMP_WAIT_POLICY unset, a pool thread that runs out of
work spins about 3 ms (GOMP_SPINCOUNT=300000) before it sleeps, so that the next parallel region
finds it awake. In the worker the model thread's pool shares the cores with the event loop's thread,
the decoder process and often the broker: whatever the pool spins, they wait for.

Each row runs in a fresh process (libgomp reads the variable once, when torch loads it): the engine's
traced forward pass of the default model (`--batch` frames of `--size` pixels, every core as torch
threads, as the worker's default) in one thread, beside a thread that runs Python all the time (a
stand-in for the worker's event loop), for `--seconds`. Reported per row: forward passes/s, the busy
thread's progress (million loop iterations/s), and the cores the process used. Rows alternate,
`--repeats` times each; medians, and ratios to `default`. Writes bench/results/omp-wait-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

# Row name -> the OpenMP variables its process starts with (all others removed).
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},  # libgomp's own: spin ~3 ms, then sleep
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # the worker's and the replay tool's default
}
_OMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child(seconds: float, batch: int, size: int) -> dict[str, float]:
    """One row, in this process: forward passes beside a thread running Python."""
    import torch

    from model.engine import trace_forward
    from model.models import create_model, fuse_for_inference

    torch.manual_seed(0)
    model = fuse_for_inference(create_model("age_regressor", input_size=size)).eval()
    forward = trace_forward(model, size)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: the graph executor's profiling calls
            forward(pixels)
    stop = threading.Event()
    spins = [0]

    def busy() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                n += 1
        spins[0] = n

    loop = threading.Thread(target=busy)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    loop.start()
    passes = 0
    with torch.inference_mode():
        while time.perf_counter() - wall0 < seconds:
            forward(pixels)
            passes += 1
    stop.set()
    loop.join()
    wall = time.perf_counter() - wall0
    return {
        "passes_per_s": passes / wall,
        "loop_m_iterations_per_s": spins[0] / wall / 1e6,
        "cores_used": (time.process_time() - cpu0) / wall,
    }


def run_row(name: str, args: argparse.Namespace) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in _OMP_VARIABLES} | VARIANTS[name]
    command = [sys.executable, __file__, "--child", "--seconds", str(args.seconds)]
    command += ["--batch", str(args.batch), "--size", str(args.size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    row: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="frames per forward pass")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "omp-wait-cpu.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.seconds, args.batch, args.size)))
        return 0
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            runs[name].append(run_row(name, args))
    metrics = list(runs["default"][0])
    medians = {name: {m: statistics.median(r[m] for r in rs) for m in metrics} for name, rs in runs.items()}
    base = medians["default"]
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "batch": args.batch,
        "size": args.size,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "variants": VARIANTS,
        "runs": runs,
        "medians": medians,
        "ratio_to_default": {name: {m: v / base[m] for m, v in row.items()} for name, row in medians.items()},
    }
    print(f"machine: {result['machine']}; {args.batch} frames of {args.size}px per pass; medians of {args.repeats}")
    print(f"{'row':10} {'passes/s':>9} {'/ default':>9} {'loop Mit/s':>11} {'/ default':>9} {'cores':>6}")
    for name, row in medians.items():
        print(
            f"{name:10} {row['passes_per_s']:>9.1f} {row['passes_per_s'] / base['passes_per_s']:>9.2f}"
            f" {row['loop_m_iterations_per_s']:>11.2f}"
            f" {row['loop_m_iterations_per_s'] / base['loop_m_iterations_per_s']:>9.2f} {row['cores_used']:>6.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
