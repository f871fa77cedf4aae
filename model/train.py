"""`agegate train`: fit an age model on a manifest, keeping the best few checkpoints.

Seeded and resumable: the recovery checkpoint holds weights, optimizer state, the shuffling
generator's state and the epoch, so a resumed run continues the same sequence of batches. The
learning rate is a pure function of the global step (warmup + cosine), so nothing else needs saving.
Regression and bucket models go through this same loop, so their comparison is fair.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import LoadedCheckpoint, load_checkpoint, read_meta, save_checkpoint, update_extra
from model.checkpoint import code_version as package_version
from model.config import ModelConfig
from model.data.loaders import SplitTensors, load_split_tensors
from model.data.manifest import Manifest, content_hash, load_manifest
from model.engine import resolve_device
from model.errors import CheckpointError, ModelError
from model.evaluation.calibration import coverage
from model.models import AgeModel, BucketClassifier, create_model
from model.uncertainty import UncertaintyCalibration, fit_calibration

THRESHOLDS: tuple[float, ...] = (13.0, 16.0, 18.0)


class TrainingError(ModelError):
    """A training run that cannot start as asked (e.g. --init-from an incompatible checkpoint)."""


@dataclass(frozen=True, slots=True)
class TrainSettings:
    data: str
    out: str
    model: str = "age_regressor"
    head: str = "dldl"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    input_size: int = 64
    width: int = 16
    depth: int = 2
    device: str = "auto"
    threads: int = 0
    keep: int = 3
    max_train: int = 0  # 0 = all training rows
    stop_after: int = 0  # run at most this many epochs in this invocation (time-sliced runs); 0 = all
    version: str = ""
    workers: int = 2
    init_from: str = ""  # fine-tune: start from this checkpoint's weights and architecture
    mix: str = ""  # an extra manifest whose train split joins this one's (e.g. the base dataset)
    mix_max: int = 0  # use at most this many of the mixed manifest's training rows (0: all)
    # A manifest whose every row calibrates the uncertainty (mean map, std scale, floor, floor shape)
    # instead of the val split: see `calibration_rows`. "" = the val split.
    calibration_data: str = ""
    calibrate_only: bool = False  # refit OUT/best.safetensors's calibration and stop (no training)
    # Fit the mean map E[true | predicted] too. Off by default: measured not clearly better (it trades
    # the belief's over-covered centre for under-covered tails; docs/evaluation.md), and on a val split
    # of a few hundred frames it overfits.
    mean_map: bool = False


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flips and small shifts: cheap on uint8, and the synthetic faces are symmetric."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    for i in range(0, n - batch_size + 1 if n >= batch_size else n, batch_size):
        yield order[i : i + batch_size]


@torch.inference_mode()
def predict_split(
    model: AgeModel, split: SplitTensors, device: torch.device, batch: int = 512
) -> dict[str, torch.Tensor]:
    model.eval()
    means, stds, probs = [], [], []
    for i in range(0, len(split.ages), batch):
        out = model(split.images[i : i + batch].to(device))
        pred = model.predict(out)
        means.append(pred.mean.cpu())
        stds.append(pred.std.cpu())
        if pred.probs is not None:
            probs.append(pred.probs.cpu())
    result = {"mean": torch.cat(means), "std": torch.cat(stds), "age": split.ages}
    if probs:
        result["probs"] = torch.cat(probs)
    return result


def summarize(model: AgeModel, pred: dict[str, torch.Tensor]) -> dict[str, float]:
    """MAE, CS@5, uncertainty calibration and threshold error rates at 13/16/18.

    Decisions: the regressor says "at least T" when its mean is >= T (P(age >= T) >= 0.5); the
    bucket model when the mass of buckets at or above T is >= 0.5, i.e. what the old system did.
    """
    age, mean, std = pred["age"], pred["mean"], pred["std"]
    err = (mean - age).abs()
    metrics: dict[str, float] = {
        "n": float(len(age)),
        "mae": float(err.mean()),
        "cs5": float((err <= 5).float().mean()),
        "within_1std": float((err <= std).float().mean()),  # ~0.683 when calibrated
        "nll": float((0.5 * torch.log(2 * math.pi * std**2) + (mean - age) ** 2 / (2 * std**2)).mean()),
    }
    for t in THRESHOLDS:
        says_adult = model.prob_at_least(pred["probs"], t) >= 0.5 if isinstance(model, BucketClassifier) else mean >= t
        is_adult = age >= t
        minors, adults = ~is_adult, is_adult
        tag = int(t)
        metrics[f"t{tag}_error"] = float((says_adult != is_adult).float().mean())
        metrics[f"t{tag}_minor_as_adult"] = float((says_adult & minors).sum() / minors.sum().clamp_min(1))
        metrics[f"t{tag}_adult_as_minor"] = float((~says_adult & adults).sum() / adults.sum().clamp_min(1))
    return metrics


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = opt.state_dict()
    tensors = {
        f"optim.{idx}.{key}": (val if isinstance(val, torch.Tensor) else torch.tensor(val))
        for idx, st in state["state"].items()
        for key, val in st.items()
    }
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": groups})


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty())
    except ImportError:
        return None


def _initial_config(s: TrainSettings, parent: Any, ages: torch.Tensor) -> ModelConfig:
    """The architecture to train: the parent's under a new version when fine-tuning, else from the settings."""
    config = ModelConfig(
        name=s.model,
        version=s.version or time.strftime("%Y%m%d-%H%M%S"),
        input_size=s.input_size,
        width=s.width,
        depth=s.depth,
        head=s.head,  # type: ignore[arg-type]
    )
    if parent is not None:  # the parent's architecture (and bucket centres), under the new version
        return dataclasses.replace(parent.config, version=config.version)
    if s.model != "bucket_classifier":
        return config
    # Representative age per bucket from the training labels: the fairest mean the baseline can give.
    probe = create_model(config)
    assert isinstance(probe, BucketClassifier)
    idx = probe.bucket_of(ages)
    defaults = config.bucket_centres
    centres = tuple(
        float(ages[idx == b].mean()) if (idx == b).any() else defaults[b] for b in range(config.num_buckets)
    )
    return dataclasses.replace(config, bucket_centres=centres)


def _run_epoch(
    model: Any,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    tr: Any,
    gen: torch.Generator,
    s: TrainSettings,
    device: torch.device,
    *,
    epoch: int,
    steps_per_epoch: int,
    total_steps: int,
    amp_dtype: torch.dtype | None,
) -> tuple[float, int]:
    """One pass over the training split; (summed loss, images seen). `amp_dtype` None: full precision."""
    model.train()
    running, seen = 0.0, 0
    bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{s.epochs}")
    for step_in_epoch, idx in enumerate(batches(len(tr.ages), s.batch_size, gen)):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch * steps_per_epoch + step_in_epoch, total_steps, s.lr, s.warmup_steps)
        x = augment(tr.images[idx], gen).to(device, non_blocking=True)
        y = tr.ages[idx].to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None):
            loss = model.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        running += float(loss.detach()) * len(idx)
        seen += len(idx)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running / seen:.3f}")
    if bar is not None:
        bar.close()
    return running, seen


def train(s: TrainSettings) -> dict[str, Any]:
    torch.manual_seed(s.seed)
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    device = resolve_device(s.device)
    out = Path(s.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(s.data)
    parent = load_parent(s) if s.init_from else None
    input_size = parent.config.input_size if parent is not None else s.input_size
    train_rows = manifest.split("train")
    if s.max_train:
        train_rows = train_rows[: s.max_train]
    if s.calibrate_only:
        return recalibrate(s, manifest, train_rows, device)
    lineage = data_lineage(manifest, [*train_rows, *manifest.split("val")], content_hash(manifest))
    cal_split = calibration_rows(s, manifest, train_rows)
    if s.calibration_data:
        lineage = with_calibration_lineage(lineage, cal_split)
    t0 = time.perf_counter()
    tr = load_split_tensors(manifest, train_rows, input_size, workers=s.workers)
    va = load_split_tensors(manifest, manifest.split("val"), input_size, workers=s.workers)
    mixed = load_manifest(s.mix) if s.mix else None
    if mixed is not None:
        mix_rows = mixed.split("train")[: s.mix_max or None]
        tr = concat_splits(tr, load_split_tensors(mixed, mix_rows, input_size, workers=s.workers))
        lineage = merge_lineage(lineage, data_lineage(mixed, mix_rows, content_hash(mixed)))
    data_hash = combined_hash(manifest, mixed)
    lineage = finetune_lineage(lineage, s, manifest, mixed, parent)
    if len(tr.ages) == 0 or len(va.ages) == 0:
        raise SystemExit(f"{s.data}: need images in both train and val splits (got {len(tr.ages)}, {len(va.ages)})")
    print(f"loaded train={len(tr.ages)} val={len(va.ages)} in {time.perf_counter() - t0:.1f}s; data {data_hash[:19]}")

    config = _initial_config(s, parent, tr.ages)
    model = create_model(config)
    if parent is not None:
        model.load_state_dict(parent.model.state_dict(), strict=True)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(s.seed)
    steps_per_epoch = max(1, len(tr.ages) // s.batch_size)
    total_steps = steps_per_epoch * s.epochs
    start_epoch, best = 0, []  # best: list of (val_mae, path)
    recovery = out / "recovery.safetensors"
    resolved = {
        **dataclasses.asdict(s),
        "dataset_hash": data_hash,
        "config": config.to_dict(),
        "device": str(device),
        "torch": torch.__version__,
        "code_version": f"{package_version()}+{git_commit() or 'nogit'}",
    }
    if recovery.exists():
        loaded = load_checkpoint(recovery, expect={"name": config.name, "input_size": config.input_size})
        if loaded.meta.dataset_hash != data_hash:
            raise SystemExit(f"{recovery}: was trained on {loaded.meta.dataset_hash}, not {data_hash}; use a new --out")
        config = loaded.config
        model = loaded.model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        _restore_optimizer(opt, loaded.extra_tensors, loaded.meta.extra["param_groups"])
        gen.set_state(loaded.extra_tensors["rng"])
        start_epoch = int(loaded.meta.extra["epoch"]) + 1
        best = [(float(m), str(p)) for m, p in loaded.meta.extra["best"]]
        print(f"resumed from {recovery} at epoch {start_epoch}")
    (out / "run_config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    history = []
    last_epoch = s.epochs if not s.stop_after else min(s.epochs, start_epoch + s.stop_after)
    for epoch in range(start_epoch, last_epoch):
        t_epoch = time.perf_counter()
        running, seen = _run_epoch(
            model,
            opt,
            scaler,
            tr,
            gen,
            s,
            device,
            epoch=epoch,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            amp_dtype=amp_dtype if use_amp else None,
        )
        val = summarize(model, predict_split(model, va, device))
        val["train_loss"] = running / max(1, seen)
        history.append({"epoch": epoch + 1, **val})
        ckpt = out / "checkpoints" / f"epoch{epoch + 1:03d}-mae{val['mae']:.3f}.safetensors"
        save_checkpoint(
            ckpt,
            model,
            dataset_hash=data_hash,
            metrics=val,
            code_version_=resolved["code_version"],
            extra={"epoch": epoch, "settings": dataclasses.asdict(s), "lineage": lineage},
        )
        best = sorted([*best, (val["mae"], str(ckpt))])
        for _, dropped in best[s.keep :]:
            Path(dropped).unlink(missing_ok=True)
        best = best[: s.keep]
        opt_tensors, groups = _optimizer_tensors(opt)
        save_checkpoint(
            recovery,
            model,
            dataset_hash=data_hash,
            metrics=val,
            code_version_=resolved["code_version"],
            kind="recovery",
            extra={"epoch": epoch, "best": best, "param_groups": groups},
            extra_tensors={**opt_tensors, "rng": gen.get_state()},
        )
        print(
            f"epoch {epoch + 1}/{s.epochs} loss {val['train_loss']:.3f} val MAE {val['mae']:.2f} "
            f"CS@5 {val['cs5']:.3f} "
            f"({time.perf_counter() - t_epoch:.0f}s, {seen / (time.perf_counter() - t_epoch):.0f} img/s)"
        )

    best_path = Path(best[0][1])
    tmp = out / "best.safetensors.tmp"
    shutil.copyfile(best_path, tmp)
    cal_data = (
        va
        if not s.calibration_data
        else load_split_tensors(cal_split[0], cal_split[1], config.input_size, workers=s.workers)
    )
    # before it becomes visible as best
    calibration, uncertainty = calibrate_uncertainty(tmp, cal_data, device, mean_map=s.mean_map)
    os.replace(tmp, out / "best.safetensors")  # readers (tests sharing a cache) never see half a file
    result: dict[str, Any] = {
        "best": str(out / "best.safetensors"),
        "val": read_meta(best_path).metrics,
        "history": history,
        "uncertainty": uncertainty,
    }
    te_rows = manifest.split("test")
    if te_rows:
        te = load_split_tensors(manifest, te_rows, config.input_size, workers=s.workers)
        best_model = load_checkpoint(out / "best.safetensors").model.to(device)
        te_pred = predict_split(best_model, te, device)
        result["test"] = summarize(best_model, te_pred)
        uncertainty["test_coverage"] = coverage_before_after(te_pred, calibration)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


# -- uncertainty calibration (one step after training; see model/uncertainty.py) ---------------------

COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)


def coverage_before_after(
    pred: dict[str, torch.Tensor], calibration: UncertaintyCalibration
) -> dict[str, dict[str, float]]:
    """Share of frames whose true age lies in the central 50/80/90/95% Gaussian intervals, raw and calibrated
    (calibrated = the engine's output: mean through the mean map, std scaled)."""
    age, mean, std = pred["age"].numpy(), pred["mean"].numpy(), pred["std"].numpy()
    return {
        "before": coverage(age, mean, std, COVERAGE_LEVELS),
        "after": coverage(
            age, calibration.apply_mean(pred["mean"]).numpy(), calibration.apply(pred["std"]).numpy(), COVERAGE_LEVELS
        ),
    }


def calibration_rows(s: TrainSettings, manifest: Any, train_rows: list[Any]) -> tuple[Any, list[Any]]:
    """The manifest and rows the uncertainty calibration is fitted on.

    The val split by default (what real-data loaders give). The floor's shape, and a mean map that
    follows the model's bias by age, need far more subjects with several images than a 10% val split
    of a small training set holds (a few hundred frames overfit the map), so `--calibration-data`
    names a separate manifest, e.g. `agegate synth --seed 2000 --images 4000 --per-subject 8`:
    every one of its rows is used whatever its split column says. It must not share a subject with the
    training rows (a calibration on training subjects would call the model's memory honest); its
    fingerprints join the checkpoint's lineage, so evaluation refuses it as a benchmark.
    """
    if not s.calibration_data:
        return manifest, manifest.split("val")
    cal = load_manifest(s.calibration_data)
    shared = {r.subject_id for r in train_rows} & {r.subject_id for r in cal.rows}
    if shared:
        raise SystemExit(f"{s.calibration_data}: shares {len(shared)} subjects with the training rows of {s.data}")
    if not cal.rows:
        raise SystemExit(f"{s.calibration_data}: no rows to calibrate on")
    return cal, list(cal.rows)


def with_calibration_lineage(lineage: dict[str, Any], cal_split: tuple[Any, list[Any]]) -> dict[str, Any]:
    """The lineage plus the calibration rows: a model's calibration data is data it has seen."""
    manifest, rows = cal_split
    cal = data_lineage(manifest, rows, content_hash(manifest))
    merged = dict(lineage)
    for key in ("images", "subjects"):
        merged[key] = sorted(set(lineage.get(key, [])) | set(cal.get(key, [])))
    merged["generator"] = {
        **lineage.get("generator", {}),
        "seeds": sorted(
            set(lineage.get("generator", {}).get("seeds", [])) | set(cal.get("generator", {}).get("seeds", []))
        ),
    }
    merged["calibration"] = {
        "manifest": cal.get("manifest"),
        "manifest_hash": cal.get("manifest_hash"),
        "rows": cal.get("rows"),
    }
    return merged


def recalibrate(s: TrainSettings, manifest: Any, train_rows: list[Any], device: torch.device) -> dict[str, Any]:
    """`--calibrate-only`: refit OUT/best.safetensors's calibration in place (no training), e.g. on a
    larger --calibration-data. The lineage gains the calibration rows."""
    best = Path(s.out) / "best.safetensors"
    meta = read_meta(best)
    cal_split = calibration_rows(s, manifest, train_rows)
    data = load_split_tensors(cal_split[0], cal_split[1], meta.config.input_size, workers=s.workers)
    _, uncertainty = calibrate_uncertainty(best, data, device, mean_map=s.mean_map)
    lineage = meta.extra.get("lineage")
    if s.calibration_data and isinstance(lineage, dict):
        update_extra(best, {"lineage": with_calibration_lineage(lineage, cal_split)})
    return {"best": str(best), "uncertainty": uncertainty, "recalibrated": True}


def calibrate_uncertainty(
    checkpoint: Path, va: SplitTensors, device: torch.device, *, mean_map: bool = False
) -> tuple[UncertaintyCalibration, dict[str, Any]]:
    """Fit the std scale, the error floor, its shape and its table by predicted age (after the mean map when `mean_map`,
    each on the errors the previous step leaves) on the calibration data (the validation split or
    --calibration-data), by subject, and store them in the checkpoint's metadata
    (extra["uncertainty"]), where the engine reads them.

    Runs on the checkpoint about to be promoted to best.safetensors, so every promoted model carries
    its calibration. Never the test split: that would grade the calibration on what it was fitted on.
    """
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.to(device)
    pred = predict_split(model, va, device)
    errors = (pred["mean"] - pred["age"]).numpy()
    calibration = fit_calibration(
        errors,
        pred["std"].numpy(),
        [r.subject_id for r in va.rows],
        means=pred["mean"].numpy() if mean_map else None,
        predicted=pred["mean"].numpy(),
    )
    update_extra(checkpoint, {"uncertainty": calibration.to_dict()})
    summary = {**calibration.to_dict(), "val_coverage": coverage_before_after(pred, calibration)}
    return calibration, summary


def _knots(u: dict[str, Any]) -> str:
    n = len(u.get("mean_knots_pred", ()))
    return f"{n} knots" if n else "none (identity)"


def format_uncertainty(u: dict[str, Any]) -> str:
    lines = [
        f"uncertainty: std scale {u['std_scale']:.3f} (fitted on {u['fitted_on']} calibration frames); "
        f"error floor {u['floor_years']:.2f} years ({u['floor_source']}, {u['floor_subjects']} subjects); "
        f"mean map {_knots(u)}"
    ]
    ratio = u.get("floor_ratio")
    if ratio and ratio.get("ratio"):
        lines.append(
            f"floor ratio: {ratio['ratio']:.3f} of each frame's variance is persistent (floor sqrt(ratio) x std, "
            f"what fusion uses; {ratio['source']}, {ratio['subjects']} subjects)"
        )
    elif ratio:
        lines.append(f"floor ratio: none, the scalar floor for every frame ({ratio['source']})")
    shape = u.get("floor_shape")
    if shape:
        lines.append(
            f"floor shape: {shape['weight']:.2f} of people at {shape['narrow']:.2f} x floor, the rest at "
            f"{shape['wide']:.2f} x floor ({shape['source']}, {shape['subjects']} subjects)"
        )
    table = u.get("floor_table")
    if table and table.get("knots"):
        bands = ", ".join(
            f"{k:.1f}: {v:.2f} ({n})"
            for k, v, n in zip(table["knots"], table["values"], table["subjects"], strict=True)
        )
        lines.append(f"floor by predicted age (years, subjects): {bands}")
    elif table:
        lines.append(f"floor by predicted age: none ({table['source']})")
    for split in ("val", "test"):
        cov = u.get(f"{split}_coverage")
        if cov:
            for when in ("before", "after"):
                levels = "  ".join(f"{k} {v:.3f}" for k, v in cov[when].items())
                lines.append(f"{split} frame coverage {when:<6} calibration: {levels}")
    return "\n  ".join(lines)


# --- lineage (the leakage guard's record) ---------------------------------------------------------


def data_lineage(manifest: Any, rows: list[Any], data_hash: str) -> dict[str, Any]:
    """What this checkpoint saw: manifest hash, generator seeds, image and subject fingerprints of the
    training and validation rows, so `agegate eval` can refuse a benchmark that overlaps them."""
    from model.evaluation.leakage import training_lineage

    return training_lineage(manifest, rows, data_hash)


# --- fine-tuning from a checkpoint (--init-from), optionally mixed with a base manifest (--mix) -----

ARCHITECTURE_FIELDS = ("model", "head", "input_size", "width", "depth")  # TrainSettings -> ModelConfig fields


def load_parent(s: TrainSettings) -> LoadedCheckpoint:
    """The checkpoint to fine-tune, refused (TrainingError) when its architecture contradicts an
    architecture option given on the command line: its weights only fit the network they came from,
    so the architecture is the parent's; an option that asks for another would be silently ignored."""
    try:
        parent = load_checkpoint(s.init_from)
    except CheckpointError as exc:
        raise TrainingError(f"--init-from {s.init_from}: {exc}") from None
    defaults = TrainSettings(data="", out="")
    have = {
        "model": parent.config.name,
        "head": parent.config.head,
        "input_size": parent.config.input_size,
        "width": parent.config.width,
        "depth": parent.config.depth,
    }
    clashes = [
        f"--{f.replace('_', '-')} {getattr(s, f)} (checkpoint: {have[f]})"
        for f in ARCHITECTURE_FIELDS
        if getattr(s, f) != getattr(defaults, f) and getattr(s, f) != have[f]
    ]
    if clashes:
        raise TrainingError(
            f"--init-from {s.init_from}: incompatible architecture: "
            + ", ".join(clashes)
            + "; fine-tuning keeps the checkpoint's architecture (drop those options)"
        )
    return parent


def concat_splits(a: SplitTensors, b: SplitTensors) -> SplitTensors:
    return SplitTensors(
        images=torch.cat([a.images, b.images]), ages=torch.cat([a.ages, b.ages]), rows=(*a.rows, *b.rows)
    )


def combined_hash(manifest: Manifest, mixed: Manifest | None) -> str:
    """The dataset hash a run is tied to: the manifest's, or a hash of both content hashes when mixed
    (a resume must see the same two datasets)."""
    own = content_hash(manifest)
    if mixed is None:
        return own
    return "sha256:" + hashlib.sha256(f"{own}+{content_hash(mixed)}".encode()).hexdigest()


def merge_lineage(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Union of what two lineages saw (images, subjects, generator seeds): the leakage guard must
    refuse a benchmark that overlaps any of them."""
    out = dict(a)
    out["images"] = sorted(set(a.get("images", [])) | set(b.get("images", [])))
    out["subjects"] = sorted(set(a.get("subjects", [])) | set(b.get("subjects", [])))
    seeds = set(a.get("generator", {}).get("seeds", [])) | set(b.get("generator", {}).get("seeds", []))
    out["generator"] = {**a.get("generator", {}), "seeds": sorted(seeds)}
    out["rows"] = int(a.get("rows", 0)) + int(b.get("rows", 0))
    return out


def finetune_lineage(
    lineage: Mapping[str, Any],
    s: TrainSettings,
    manifest: Manifest,
    mixed: Manifest | None,
    parent: LoadedCheckpoint | None,
) -> dict[str, Any]:
    """Lineage plus where the model came from: the parent (version, weights hash, dataset hash),
    every dataset with its content hash and role, and the seed. A fine-tuned model has also seen
    everything its parent saw, so the parent's fingerprints are included for the leakage guard."""
    out = dict(lineage)
    out["datasets"] = [
        {"role": "train", "manifest": str(manifest.source or s.data), "content_hash": content_hash(manifest)}
    ]
    if mixed is not None:
        out["datasets"].append(
            {
                "role": "mix",
                "manifest": str(mixed.source or s.mix),
                "content_hash": content_hash(mixed),
                "max_rows": s.mix_max,
            }
        )
    out["seeds"] = {"train": s.seed}
    if parent is not None:
        parent_lineage = parent.meta.extra.get("lineage")
        if isinstance(parent_lineage, Mapping):
            out = {**merge_lineage(out, parent_lineage), "datasets": out["datasets"], "seeds": out["seeds"]}
        out["parent"] = {
            "checkpoint": s.init_from,
            "model_version": parent.config.version,
            "weights_sha256": parent.meta.weights_sha256,
            "dataset_hash": parent.meta.dataset_hash,
            "lineage_datasets": parent_lineage.get("datasets", []) if isinstance(parent_lineage, Mapping) else [],
        }
    return out


def format_metrics(name: str, m: dict[str, float]) -> str:
    parts = [f"{name}: n={int(m['n'])} MAE {m['mae']:.2f} CS@5 {m['cs5']:.3f} within1std {m['within_1std']:.3f}"]
    for t in THRESHOLDS:
        k = int(t)
        parts.append(
            f"@{k} err {m[f't{k}_error']:.3f} (minor->adult {m[f't{k}_minor_as_adult']:.3f}, "
            f"adult->minor {m[f't{k}_adult_as_minor']:.3f})"
        )
    return "\n  ".join(parts)


_INT_OPTIONS = {
    "epochs": "passes over the training split",
    "batch_size": "images per optimizer step",
    "seed": "seed of initialisation, shuffling and augmentation",
    "input_size": "image side in pixels the model sees",
    "width": "channels of the first convolution stage",
    "depth": "convolution blocks per stage",
    "threads": "CPU threads (0: torch's default)",
    "keep": "checkpoints kept in OUT (older ones deleted)",
    "max_train": "use at most this many training rows (0: all)",
    "warmup_steps": "steps of linear learning-rate warmup",
    "workers": "image-loading worker processes",
    "stop_after": "run at most this many epochs now, resumable later (0: all)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainSettings(data="", out="")
    parser.add_argument("--data", required=True, help="manifest (CSV or JSONL)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, recovery, run_config.json, metrics.json")
    parser.add_argument(
        "--model",
        default=d.model,
        choices=["age_regressor", "bucket_classifier"],
        help="architecture: the age regressor, or the legacy bucket classifier (baseline)",
    )
    parser.add_argument("--head", default=d.head, choices=["gaussian", "dldl"], help="age_regressor uncertainty head")
    for name, help_text in _INT_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name), help=help_text)
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (cosine schedule after warmup)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    parser.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--version", default="", help="model version recorded in the checkpoint (default: timestamp)")
    parser.add_argument(
        "--seeds",
        default="",
        metavar="S1,S2,...",
        help="train one run per seed (OUT/seed-S each, version suffixed -sS); overrides --seed",
    )
    parser.add_argument(
        "--init-from",
        default="",
        metavar="CKPT",
        help="fine-tune: start from this checkpoint's weights and architecture; its version, "
        "weights hash and datasets are recorded as the parent in the lineage",
    )
    parser.add_argument(
        "--mix",
        default="",
        metavar="MANIFEST",
        help="also train on this manifest's train split (e.g. the base dataset beside feedback "
        "data); validation and test stay those of --data",
    )
    parser.add_argument("--mix-max", type=int, default=0, help="use at most this many --mix training rows (0: all)")
    parser.add_argument(
        "--calibration-data",
        default="",
        metavar="MANIFEST",
        help="fit the uncertainty calibration on every row of this manifest (subjects disjoint from "
        "training, several images each) instead of the val split; see docs/evaluation.md",
    )
    parser.add_argument(
        "--calibrate-only",
        action="store_true",
        help="refit OUT/best.safetensors's calibration (on --calibration-data or the val split), then stop",
    )
    parser.add_argument(
        "--mean-map",
        action="store_true",
        help="also fit the mean map E[true | predicted] (experimental, off by default: "
        "docs/evaluation.md has the measurements)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/recovery.safetensors (also done automatically when it exists)",
    )


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; duplicates refused (two runs would write one folder)."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"--seeds {text!r} must name distinct seeds")
    return seeds


def seed_runs(settings: TrainSettings, seeds: list[int]) -> list[TrainSettings]:
    """One settings per seed: its own run folder OUT/seed-S and version suffix, so seeds never share a
    recovery checkpoint and evaluation can tell them apart."""
    base = settings.version or time.strftime("%Y%m%d-%H%M%S")
    return [
        dataclasses.replace(settings, seed=s, out=str(Path(settings.out) / f"seed-{s}"), version=f"{base}-s{s}")
        for s in seeds
    ]


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        runs = seed_runs(settings, parse_seeds(args.seeds)) if getattr(args, "seeds", "") else [settings]
    except ValueError as exc:
        print(f"agegate train: {exc}", file=sys.stderr)
        return 2
    for s in runs:
        if not args.resume and not s.calibrate_only and (Path(s.out) / "recovery.safetensors").exists():
            print(
                f"{s.out} holds a recovery checkpoint; pass --resume to continue it or choose a new --out",
                file=sys.stderr,
            )
            return 2
    best = []
    for s in runs:
        try:
            result = train(s)
        except TrainingError as exc:
            print(f"agegate train: {exc}", file=sys.stderr)
            return 2
        tag = f" [seed {s.seed}]" if len(runs) > 1 else ""
        if result.get("recalibrated"):
            print(format_uncertainty(result["uncertainty"]))
            print(f"recalibrated {result['best']}{tag}")
            continue
        print(format_metrics(f"val (best){tag}", result["val"]))
        if "test" in result:
            print(format_metrics(f"test{tag}", result["test"]))
        print(format_uncertainty(result["uncertainty"]))
        print(f"best checkpoint: {result['best']}")
        best.append(result["best"])
    if len(best) > 1:
        print("checkpoints for `agegate eval --model NAME=" + ",".join(best) + "`")
    return 0
