"""Inference benchmark: decode, infer and both, per batch size, on CPU and on CUDA when present.

    python bench/inference.py [--quick] [--checkpoint PATH] [--max-batch N] [--threads 1,2]

Compares in one run, so ratios are not skewed by a machine that changed between runs:
- batched against one-at-a-time throughput;
- the engine's fused conv+BN model against the unfused one, channels_last against NCHW input, and
  torch thread counts (CPU);
- achieved model FLOP/s against a large matrix product's FLOP/s measured here (the machine's
  practical limit). Quick mode (--quick or AGEGATE_BENCH_QUICK=1) trims batch sizes and repeats.
Writes bench/results/inference-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from model.data.synthetic import encode_jpeg, render_face, sample_attributes  # noqa: E402
from model.engine import EncodedFrame, InferenceEngine  # noqa: E402
from model.models import AgeModel, count_flops, create_model  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, budget_s: float, min_reps: int = 3) -> list[float]:
    """Per-call latencies in seconds: repeat until the time budget is spent (after one warm-up)."""
    fn()
    sync(device)
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < min_reps or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
        if len(out) >= 10_000:
            break
    return out


def matmul_flops(device: torch.device, budget_s: float) -> dict[str, float]:
    """FLOP/s of a large square matmul: the practical peak the model step is compared against."""
    sizes = (1024, 2048) if device.type == "cpu" else (4096, 8192)
    result: dict[str, float] = {}
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.bfloat16]
    for dtype in dtypes:
        best = 0.0
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            lat = timed(partial(torch.matmul, a, b), device, budget_s, min_reps=5)
            # Fastest repetition: the limit the machine reaches, not what a noisy neighbour left over.
            best = max(best, 2 * n**3 / min(lat))
        result[str(dtype).replace("torch.", "")] = best
    return result


def make_frames(n: int, size: int, seed: int = 0) -> list[EncodedFrame]:
    frames = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img = render_face(float(rng.uniform(6, 70)), sample_attributes(rng), rng, size=size)
        frames.append(EncodedFrame(encode_jpeg(img, rng), "image/jpeg"))
    return frames


def stats(lat: list[float], batch: int) -> dict[str, float]:
    arr = np.array(lat)
    return {
        "frames_per_s": batch / float(np.median(arr)),
        "p50_ms": float(np.percentile(arr, 50) * 1e3),
        "p99_ms": float(np.percentile(arr, 99) * 1e3),
        "reps": len(lat),
    }


def bench_device(
    model: AgeModel,
    device: torch.device,
    sizes: list[int],
    frames: list[EncodedFrame],
    budget: float,
    threads: int,
    state: dict[str, torch.Tensor],
) -> dict[str, Any]:
    engine = InferenceEngine(model, device=str(device), threads=threads, max_batch=max(sizes))
    flops = count_flops(engine.model, engine.config.input_size)
    variants: dict[str, Callable[[torch.Tensor], object]] = {"fused": engine.infer}
    if device.type == "cpu":
        unfused = create_model(model.config).eval()
        unfused.load_state_dict(state)  # same weights, BN kept separate

        def run_unfused(x: torch.Tensor) -> object:
            with torch.inference_mode():
                return unfused.predict(unfused(x))

        variants["unfused"] = run_unfused

        def run_nchw(x: torch.Tensor) -> object:
            # The decoder hands over an NHWC (channels_last) view; this variant pays for a copy to NCHW.
            return engine.infer(x.contiguous())

        variants["nchw"] = run_nchw
    rows = []
    for bs in sizes:
        batch = frames[:bs]
        decoded = engine.decode(batch)
        row: dict[str, Any] = {"batch": bs, "decode": stats(timed(partial(engine.decode, batch), device, budget), bs)}
        for name, fn in variants.items():
            row[f"infer_{name}"] = stats(timed(partial(fn, decoded.pixels), device, budget), bs)
        row["both"] = stats(timed(partial(engine.score, batch), device, budget), bs)
        # Decode overlapped with inference across consecutive batches (the engine's streaming path).
        stream = frames[: bs * 8] if bs * 8 <= len(frames) else frames
        engine.max_batch = bs
        stream_lat = timed(partial(engine.score, stream), device, budget)
        engine.max_batch = max(sizes)
        row["both_overlapped"] = {"frames_per_s": len(stream) / float(np.median(stream_lat))}
        row["infer_model_flops_per_s"] = flops * row["infer_fused"]["frames_per_s"]
        rows.append(row)
        print(f"  [{device.type}] batch {bs}: done", file=sys.stderr)
    engine.close()
    return {"flops_per_frame": flops, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", default=os.environ.get("AGEGATE_BENCH_QUICK") == "1")
    p.add_argument("--checkpoint", help="benchmark this checkpoint instead of a fresh default model")
    p.add_argument("--max-batch", type=int, default=0, help="largest batch size (default 256, quick 64)")
    p.add_argument(
        "--threads",
        default=f"1,{os.cpu_count() or 1}",
        help="comma-separated torch CPU thread counts, each a variant in the same run",
    )
    p.add_argument("--frame-size", type=int, default=128, help="side of the encoded test frames in pixels")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)

    max_batch = args.max_batch or (64 if args.quick else 256)
    sizes = [2**i for i in range(max_batch.bit_length()) if 2**i <= max_batch]
    budget = 0.25 if args.quick else 1.0
    torch.manual_seed(0)
    thread_counts = sorted({int(t) for t in str(args.threads).split(",") if t.strip()})
    if args.checkpoint:
        from model.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint).model
    else:
        model = create_model("age_regressor").eval()
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    frames = make_frames(max(max_batch * 8 if not args.quick else max_batch * 4, 64), args.frame_size)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    args.out.mkdir(parents=True, exist_ok=True)
    for device in devices:
        machine: dict[str, Any] = {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        }
        runs = []
        for threads in thread_counts if device.type == "cpu" else thread_counts[-1:]:
            torch.set_num_threads(threads)
            machine["torch_threads"] = threads
            peak = matmul_flops(device, budget)
            fresh = create_model(model.config).eval()
            fresh.load_state_dict(model_state)
            result = bench_device(fresh, device, sizes, frames, budget, threads, model_state)
            ref = peak["bfloat16"] if device.type == "cuda" else peak["float32"]
            summary = summarize(result, ref)
            runs.append({"threads": threads, "matmul_flops_per_s": peak, **result, "summary": summary})
            print_table(dict(machine), result, peak, summary)
        if len(runs) > 1:
            base = runs[0]["summary"]["best_end_to_end_frames_per_s"]
            for run in runs[1:]:
                ratio = run["summary"]["best_end_to_end_frames_per_s"] / base
                print(f"threads {run['threads']} vs {runs[0]['threads']}: end-to-end x{ratio:.2f}")
        machine.pop("torch_threads")
        report = {
            "machine": machine,
            "quick": args.quick,
            "frame_size": args.frame_size,
            "load_average": list(os.getloadavg()),
            "config": model.config.to_dict(),
            "runs": runs,
        }
        path = args.out / f"inference-{device.type}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    return 0


def summarize(result: dict[str, Any], ref_flops: float) -> dict[str, float]:
    rows = result["rows"]
    first, best = rows[0], max(rows, key=lambda r: r["both_overlapped"]["frames_per_s"])
    top = max(rows, key=lambda r: r["infer_fused"]["frames_per_s"])
    out = {
        "best_end_to_end_frames_per_s": best["both_overlapped"]["frames_per_s"],
        "best_end_to_end_batch": best["batch"],
        "batched_vs_single_end_to_end": best["both_overlapped"]["frames_per_s"] / first["both"]["frames_per_s"],
        "batched_vs_single_infer": top["infer_fused"]["frames_per_s"] / first["infer_fused"]["frames_per_s"],
        "infer_flops_fraction_of_matmul": top["infer_model_flops_per_s"] / ref_flops,
    }
    for variant in ("unfused", "nchw"):
        if f"infer_{variant}" in top:
            out[f"fused_channels_last_vs_{variant}_infer"] = (
                top["infer_fused"]["frames_per_s"] / top[f"infer_{variant}"]["frames_per_s"]
            )
    return out


def print_table(
    machine: dict[str, Any], result: dict[str, Any], peak: dict[str, float], summary: dict[str, float]
) -> None:
    print(
        f"\n{machine['cpu']} | cores {machine['cores']} | torch threads {machine['torch_threads']} | "
        f"torch {machine['torch']} | gpu {machine['gpu']}"
    )
    print(
        f"model {result['flops_per_frame'] / 1e6:.1f} MFLOP/frame | matmul "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items())
    )
    has_unfused = "infer_unfused" in result["rows"][0]
    head = f"{'batch':>5} | {'decode f/s':>10} {'p50':>7} {'p99':>7} | {'infer f/s':>9} {'p50':>7} {'p99':>7} |"
    head += f" {'unfused f/s':>11} {'nchw f/s':>9} |" if has_unfused else ""
    head += f" {'both f/s':>8} {'p50':>7} {'p99':>7} | {'overlap f/s':>11} | {'GFLOP/s':>7} {'%mm':>5}"
    print(head)
    ref = peak.get("bfloat16", peak["float32"])
    for r in result["rows"]:
        d, i, b = r["decode"], r["infer_fused"], r["both"]
        line = (
            f"{r['batch']:>5} | {d['frames_per_s']:>10.0f} {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f} | "
            f"{i['frames_per_s']:>9.0f} {i['p50_ms']:>7.2f} {i['p99_ms']:>7.2f} |"
        )
        if has_unfused:
            line += f" {r['infer_unfused']['frames_per_s']:>11.0f} {r['infer_nchw']['frames_per_s']:>9.0f} |"
        line += (
            f" {b['frames_per_s']:>8.0f} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f} | "
            f"{r['both_overlapped']['frames_per_s']:>11.0f} | {r['infer_model_flops_per_s'] / 1e9:>7.1f} "
            f"{100 * r['infer_model_flops_per_s'] / ref:>4.0f}%"
        )
        print(line)
    print("summary: " + ", ".join(f"{k}={v:.3g}" for k, v in summary.items()))


if __name__ == "__main__":
    sys.exit(main())
