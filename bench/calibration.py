"""Uncertainty calibration benchmark: is a frame's std honest, and is the error floor right?

    python bench/calibration.py [--checkpoint PATH] [--images 4000] [--per-subject 8] [--seed 1000]

On a model trained like the demo's (`model.testing.train_tiny_checkpoint`: 4000 synthetic 64px
images, 4 epochs; trained here and cached unless --checkpoint is given) and a held-out synthetic
benchmark (another seed, so no benchmark subject was trained on; several images per subject, so the
floor can be checked), it reports:
- frame coverage (share of true ages inside the central 50/80/90/95% Gaussian intervals) before and
  after the calibration stored in the checkpoint, overall and by true-age band near the thresholds;
- the same with per-age-band scales (fitted on the training manifest's val split by predicted-age
  band), to decide whether they are worth having;
- the error floor: stored (val split), re-estimated on the benchmark, and what the generator's truth
  implies (its per-person offset sd of 2.0 years plus the model's own bias by age, measured here);
- belief coverage when n frames of one person are fused the way the stream does with the floor,
  std = sqrt(1/P + floor^2) with P summing only the within-person part of each frame's variance,
  next to fusion that treats frames as independent.
Prints a table and writes bench/results/calibration.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from model.checkpoint import load_checkpoint  # noqa: E402
from model.data.loaders import SplitTensors, load_split_tensors  # noqa: E402
from model.data.manifest import load_manifest  # noqa: E402
from model.data.synthetic import generate_dataset  # noqa: E402
from model.engine import InferenceEngine  # noqa: E402
from model.evaluation.calibration import coverage  # noqa: E402
from model.testing import train_tiny_checkpoint  # noqa: E402
from model.uncertainty import estimate_error_floor, fit_std_scale  # noqa: E402

CACHE = Path.home() / ".cache" / "agegate" / "bench" / "calibration"
LEVELS = (0.5, 0.8, 0.9, 0.95)
TRUE_BANDS = ((10.0, 14.0), (14.0, 18.0), (18.0, 22.0), (22.0, 30.0))
# Per-band scales are indexed by the PREDICTED age (the true one is unknown when serving).
PRED_BANDS = ((-1e9, 10.0), (10.0, 14.0), (14.0, 18.0), (18.0, 22.0), (22.0, 30.0), (30.0, 1e9))
MIN_BAND_FRAMES = 30
GENERATOR_OFFSET_SD = 2.0  # model/data/synthetic.py: offset = rng.normal(0, 2.0) per subject
FUSE_COUNTS = (1, 2, 4, 8)


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }


def predict(engine: InferenceEngine, split: SplitTensors, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated (mean, std) through the engine, the path every consumer uses."""
    means, stds = [], []
    for i in range(0, len(split.ages), batch):
        pred = engine.infer(split.images[i : i + batch])
        means.append(pred.mean.numpy())
        stds.append(pred.std.numpy())
    return np.concatenate(means), np.concatenate(stds)


def band_scales(mean: np.ndarray, err: np.ndarray, raw_std: np.ndarray, fallback: float) -> list[float]:
    out = []
    for lo, hi in PRED_BANDS:
        sel = (mean >= lo) & (mean < hi)
        out.append(fit_std_scale(err[sel], raw_std[sel]) if sel.sum() >= MIN_BAND_FRAMES else fallback)
    return out


def apply_band_scales(mean: np.ndarray, raw_std: np.ndarray, scales: list[float]) -> np.ndarray:
    idx = np.searchsorted(np.array([hi for _, hi in PRED_BANDS[:-1]]), mean, side="right")
    return raw_std * np.asarray(scales)[idx]


def coverage_table(age: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, dict[str, float]]:
    """Coverage overall and by true-age band, with the band's mean signed error (a bias no std scale can fix)."""
    out = {"all": {"n": float(age.size), "bias": float(np.mean(mean - age)), **coverage(age, mean, std, LEVELS)}}
    for lo, hi in TRUE_BANDS:
        sel = (age >= lo) & (age < hi)
        out[f"{lo:g}-{hi:g}"] = {
            "n": float(sel.sum()),
            "bias": float(np.mean(mean[sel] - age[sel])),
            **coverage(age[sel], mean[sel], std[sel], LEVELS),
        }
    return out


def fused_coverage(
    err: np.ndarray, std: np.ndarray, age: np.ndarray, subjects: list[str], floor: float | None
) -> dict[str, dict[str, float]]:
    """Coverage of the fused belief over each subject's first n frames, overall ("n=4") and by the
    subject's true-age band ("n=4 14-18"). With a floor: the stream's rule (within_var =
    max(s^2 - floor^2, 0.25 s^2), std = sqrt(1/P + floor^2)); without: independent frames."""
    by_subject: dict[str, list[int]] = {}
    for i, sid in enumerate(subjects):
        by_subject.setdefault(sid, []).append(i)
    out: dict[str, dict[str, float]] = {}
    for n in FUSE_COUNTS:
        errs, stds, ages = [], [], []
        for rows in by_subject.values():
            if len(rows) < n:
                continue
            e, s = err[rows[:n]], std[rows[:n]]
            var = np.maximum(s**2 - floor**2, 0.25 * s**2) if floor is not None else s**2
            p = float(np.sum(1.0 / var))
            errs.append(float(np.sum(e / var)) / p)
            stds.append(float(np.sqrt(1.0 / p + (floor**2 if floor is not None else 0.0))))
            ages.append(float(np.mean(age[rows[:n]])))
        e_arr, s_arr, a_arr = np.asarray(errs), np.asarray(stds), np.asarray(ages)
        out[f"n={n}"] = {
            "subjects": float(e_arr.size),
            "bias": float(e_arr.mean()),
            **coverage(np.zeros_like(e_arr), e_arr, s_arr, LEVELS),
        }
        for lo, hi in TRUE_BANDS:
            sel = (a_arr >= lo) & (a_arr < hi)
            out[f"n={n} {lo:g}-{hi:g}"] = {
                "subjects": float(sel.sum()),
                "bias": float(e_arr[sel].mean()),
                **coverage(np.zeros(int(sel.sum())), e_arr[sel], s_arr[sel], LEVELS),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: a demo-like model, trained and cached")
    p.add_argument("--images", type=int, default=4000, help="benchmark images")
    p.add_argument("--per-subject", type=int, default=8, help="benchmark images per subject")
    p.add_argument("--seed", type=int, default=1000, help="benchmark seed (the demo model trains on seed 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    ckpt = args.checkpoint or train_tiny_checkpoint(CACHE / "model")
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu")
    cal = engine.uncertainty
    size = engine.config.input_size

    bench_dir = CACHE / f"bench-s{args.seed}-n{args.images}-k{args.per_subject}-{size}px"
    manifest_path = bench_dir / "manifest.csv"
    if not manifest_path.exists():
        generate_dataset(
            bench_dir,
            images=args.images,
            seed=args.seed,
            images_per_subject=args.per_subject,
            size=size,
            workers=min(2, os.cpu_count() or 1),
        )
    bench = load_manifest(manifest_path)
    data = load_split_tensors(bench, bench.rows, size, workers=2)  # every split: no benchmark subject was trained on
    age = data.ages.numpy().astype(np.float64)
    mean, std = predict(engine, data)
    raw_std = std / cal.std_scale
    err = mean - age
    subjects = [r.subject_id for r in data.rows]

    # Per-band scales, fitted like the single one: on the val split of the model's training manifest.
    meta_settings = load_checkpoint(ckpt).meta.extra.get("settings", {})
    val_scales: list[float] | None = None
    if meta_settings.get("data") and Path(meta_settings["data"]).exists():
        train_manifest = load_manifest(meta_settings["data"])
        va = load_split_tensors(train_manifest, train_manifest.split("val"), size, workers=2)
        v_mean, v_std = predict(engine, va)
        val_scales = band_scales(v_mean, v_mean - va.ages.numpy(), v_std / cal.std_scale, cal.std_scale)

    frame = {
        "before": coverage_table(age, mean, raw_std),
        "after": coverage_table(age, mean, std),
        **(
            {"after_band_scales": coverage_table(age, mean, apply_band_scales(mean, raw_std, val_scales))}
            if val_scales
            else {}
        ),
    }
    bench_floor = estimate_error_floor(err, subjects)
    # The model's own bias by true age (2-year bins): persistent for a person, whose images span <= 3 years.
    bins = np.floor(age / 2.0)
    bias = np.zeros_like(err)
    for b in np.unique(bins):
        bias[bins == b] = err[bins == b].mean()
    implied = float(np.sqrt(GENERATOR_OFFSET_SD**2 + np.mean(bias**2)))
    floor = {
        "stored_val": {"floor_years": cal.floor_years, "subjects": cal.floor_subjects, "source": cal.floor_source},
        "benchmark": {
            "floor_years": bench_floor.floor_years,
            "subjects": bench_floor.subjects,
            "within_sd": bench_floor.within_sd,
        },
        "generator_offset_sd": GENERATOR_OFFSET_SD,
        "model_bias_rms": float(np.sqrt(np.mean(bias**2))),
        "implied_by_generator_and_bias": implied,
    }
    fused = {
        "with_floor": fused_coverage(err, std, age, subjects, cal.floor_years),
        "independent": fused_coverage(err, std, age, subjects, None),
    }
    report = {
        "machine": machine(),
        "checkpoint": str(ckpt),
        "model_version": engine.model_version,
        "benchmark": {"seed": args.seed, "images": len(age), "per_subject": args.per_subject, "size": size},
        "calibration": cal.to_dict(),
        "band_scales_val": dict(zip([f"{lo:g}-{hi:g}" for lo, hi in PRED_BANDS], val_scales or [], strict=False)),
        "frame_coverage": frame,
        "floor": floor,
        "fused_coverage": fused,
        "mae": float(np.abs(err).mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, sort_keys=True))
    print_report(report)
    print(f"wrote {args.out}")
    return 0


def _row(label: str, cov: dict[str, float]) -> str:
    levels = "  ".join(f"{cov[f'p{round(q * 100)}']:.3f}" for q in LEVELS)
    bias = f"   bias {cov['bias']:+.2f}" if "bias" in cov else ""
    return f"  {label:<28} n={int(cov.get('n', cov.get('subjects', 0))):>5}  {levels}{bias}"


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\n{m['cpu']} | cores {m['cores']} | torch threads {m['torch_threads']} | torch {m['torch']}")
    c = r["calibration"]
    print(
        f"model {r['model_version']} | benchmark seed {r['benchmark']['seed']}, {r['benchmark']['images']} images, "
        f"{r['benchmark']['per_subject']} per subject | MAE {r['mae']:.2f}"
    )
    print(
        f"calibration: std scale {c['std_scale']:.3f}; floor {c['floor_years']:.2f} y ({c['floor_source']}, "
        f"{c['floor_subjects']} val subjects)"
    )
    nominal = "  ".join(f"{q:.3f}" for q in LEVELS)
    print(f"\nframe coverage {'':>21}         {nominal}   (nominal)")
    for when, table in r["frame_coverage"].items():
        for band, cov in table.items():
            print(_row(f"{when} {band}", cov))
    f = r["floor"]
    print(
        f"\nerror floor (sd, years): stored (val) {f['stored_val']['floor_years']:.2f} | re-estimated on benchmark "
        f"{f['benchmark']['floor_years']:.2f} ({f['benchmark']['subjects']} subjects, within-person sd "
        f"{f['benchmark']['within_sd']:.2f}) | generator offset sd {f['generator_offset_sd']:.1f}, model bias rms "
        f"{f['model_bias_rms']:.2f}, together {f['implied_by_generator_and_bias']:.2f}"
    )
    print(f"\nbelief coverage, n frames of one person fused {'':>0}  {nominal}")
    for how, table in r["fused_coverage"].items():
        for n, cov in table.items():
            if how == "with_floor" or " " not in n:  # independent fusion: overall rows are enough to see it fail
                print(_row(f"{how} {n}", cov))
    print(f"\n{r['seconds']:.0f}s")


if __name__ == "__main__":
    raise SystemExit(main())
