"""Why a worker decodes in processes and traces its forward pass: both beside a busy event loop, in one run.

    python bench/gil_convoy.py [--frames 2000] [--size 64] [--busy-share 1.0] [--batch 64]

A decoding thread gives up the interpreter lock around each codec call and must take it back after;
while another thread runs Python (the worker's event loop), taking it back waits until that thread
is made to yield, up to `sys.getswitchinterval()` (5 ms by default). Rows, each frames/s over the
same synthetic JPEG faces (the load generator's, `--size` pixels square):
- `thread alone`: `decode_rgb` in one thread, nothing else running (the engine benchmark's case);
- `thread, busy loop, switch S`: the same beside a thread that runs Python `--busy-share` of the time,
  with the interpreter's switch interval at S;
- `process, busy loop`: the same frames through a one-process `DecodePool` (the worker's
  `AGEGATE_DECODE_PROCESSES=1`), beside the same busy thread: a batch costs a few lock handoffs, not
  several per frame.
Ratios are against `thread alone` in the same run.

The forward pass meets the same lock: eager, every operator of a pass gives it up and takes it back.
Rows `forward eager|traced, alone|busy loop`: passes/s of one `--batch`-frame forward pass of the
default model (`create_model("age_regressor")` at `--size`, one torch thread, fused as the engine
fuses it), eager (module by module from Python) and as the engine runs it on the CPU (the graph
`trace_forward` returns), each alone and beside the busy thread at the default switch interval.
Their ratios are against `forward eager alone`. Writes bench/results/gil-convoy-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from model.data.synthetic import encode_jpeg, render_face, sample_attributes  # noqa: E402
from model.decode import DecodeLimits, decode_rgb  # noqa: E402
from model.decode_pool import DecodePool  # noqa: E402
from model.engine import trace_forward  # noqa: E402
from model.models import create_model, fuse_for_inference  # noqa: E402

SWITCH_INTERVALS_S = (0.005, 0.001, 0.0002)
POOL_BATCH = 64  # frames per DecodePool call: one forward pass's worth


class BusyLoop:
    """A thread that runs Python `share` of each millisecond and sleeps the rest (a stand-in for an
    event loop that is busy that share of the time)."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            until = time.perf_counter() + 0.001 * self.share
            while time.perf_counter() < until:
                pass
            if self.share < 1.0:
                time.sleep(0.001 * (1.0 - self.share))

    def __enter__(self) -> BusyLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def faces(n: int, size: int, seed: int = 3) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [
        encode_jpeg(render_face(float(rng.uniform(8, 60)), sample_attributes(rng), rng, size=size), rng)
        for _ in range(n)
    ]


def frames_per_s(run: Callable[[], int]) -> float:
    started = time.perf_counter()
    n = run()
    return n / (time.perf_counter() - started)


def forward_rows(size: int, batch: int, busy_share: float, passes: int = 30) -> dict[str, float]:
    """Passes/s of the eager and the traced forward pass, each alone and beside a busy thread."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = fuse_for_inference(create_model("age_regressor", input_size=size)).eval()
    forwards: dict[str, Callable[[Any], Any]] = {"eager": model, "traced": trace_forward(model, size)}
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    pixels = pixels.contiguous(memory_format=torch.channels_last)

    def run(forward: Callable[[Any], Any]) -> Callable[[], int]:
        def go() -> int:
            with torch.inference_mode():
                for _ in range(passes):
                    forward(pixels)
            return passes

        return go

    rows: dict[str, float] = {}
    for name, forward in forwards.items():
        run(forward)()  # warm-up (and the graph executor's profiling calls)
        rows[f"forward {name} alone"] = frames_per_s(run(forward))
        with BusyLoop(busy_share):
            rows[f"forward {name}, busy loop"] = frames_per_s(run(forward))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (the load generator's default)")
    parser.add_argument("--busy-share", type=float, default=1.0, help="share of time the busy thread runs Python")
    parser.add_argument("--batch", type=int, default=64, help="frames per forward pass")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gil-convoy-cpu.json")
    args = parser.parse_args()
    data = faces(args.frames, args.size)
    limits = DecodeLimits()

    def in_thread() -> int:
        for d in data:
            decode_rgb(d, "image/jpeg", args.size, limits)
        return len(data)

    rows: dict[str, float] = {"thread alone": frames_per_s(in_thread)}
    default_interval = sys.getswitchinterval()
    try:
        for interval in SWITCH_INTERVALS_S:
            sys.setswitchinterval(interval)
            with BusyLoop(args.busy_share):
                rows[f"thread, busy loop, switch {interval * 1000:g} ms"] = frames_per_s(in_thread)
    finally:
        sys.setswitchinterval(default_interval)
    pool = DecodePool(1, args.size, limits)
    try:
        requests = [[(d, "image/jpeg") for d in data[i : i + POOL_BATCH]] for i in range(0, len(data), POOL_BATCH)]

        def in_process() -> int:
            return sum(len(pool.decode(r).indices) for r in requests)

        in_process()  # the decoder's first batch imports Pillow
        rows["process alone"] = frames_per_s(in_process)
        with BusyLoop(args.busy_share):
            rows["process, busy loop, switch 5 ms"] = frames_per_s(in_process)
    finally:
        pool.close()

    forward = forward_rows(args.size, args.batch, args.busy_share)
    alone, eager_alone = rows["thread alone"], forward["forward eager alone"]
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "frames": args.frames,
        "size": args.size,
        "busy_share": args.busy_share,
        "frames_per_s": rows,
        "ratio_to_thread_alone": {name: v / alone for name, v in rows.items()},
        "forward_batch": args.batch,
        "forward_passes_per_s": forward,
        "ratio_to_forward_eager_alone": {name: v / eager_alone for name, v in forward.items()},
    }
    print(f"machine: {result['machine']}; {args.frames} frames of {args.size}px; busy share {args.busy_share:g}")
    print(f"{'decoding':36} {'frames/s':>10} {'/ alone':>8}")
    for name, v in rows.items():
        print(f"{name:36} {v:>10.0f} {v / alone:>8.2f}")
    print(f"{f'forward pass of {args.batch} frames':36} {'passes/s':>10} {'/ eager':>8}")
    for name, v in forward.items():
        print(f"{name:36} {v:>10.1f} {v / eager_alone:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
