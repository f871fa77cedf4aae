"""predictions.csv: each model's per-row estimates beside metrics.json, so a later run can pair them.

The paired gate needs the reference's row-level estimates, not only its summary numbers. Only the
model outputs are stored (row id = manifest path, mean, std, bucket probabilities); true ages,
subjects and attributes come back from the manifest, whose hash `--baseline` already checks.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.data.manifest import ManifestRow
from model.evaluation.metrics import BUCKET_EDGES, Estimates

FILENAME = "predictions.csv"
N_BUCKETS = len(BUCKET_EDGES) + 1
COLUMNS = ["model", "row_id", "mean", "std", *(f"bucket_{i}" for i in range(N_BUCKETS))]


class PredictionsError(ValueError):
    """The predictions file is missing, malformed, or does not match the manifest."""


def write_predictions(path: str | Path, named: Sequence[tuple[str, Estimates]]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for name, est in named:
            if est.row_id is None:
                raise PredictionsError(f"{name}: estimates carry no row ids; nothing could pair them later")
            for i in range(len(est)):
                probs = (
                    [repr(float(x)) for x in est.bucket_probs[i]] if est.bucket_probs is not None else [""] * N_BUCKETS
                )
                w.writerow([name, est.row_id[i], repr(float(est.mean[i])), repr(float(est.std[i])), *probs])
    return p


def read_predictions(path: str | Path, rows: Sequence[ManifestRow], model: str | None = None) -> tuple[str, Estimates]:
    """One model's estimates (the first in the file unless named), rebuilt against the manifest rows."""
    p = Path(path)
    if not p.exists():
        raise PredictionsError(f"{p}: no predictions file (reports written before schema 2 have none)")
    by_path = {r.path: r for r in rows}
    kept: list[ManifestRow] = []
    means: list[float] = []
    stds: list[float] = []
    probs: list[list[float]] = []
    chosen = model
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != COLUMNS:
            raise PredictionsError(f"{p}: columns {reader.fieldnames}, expected {COLUMNS}")
        for rec in reader:
            chosen = chosen or rec["model"]
            if rec["model"] != chosen:
                continue
            row = by_path.get(rec["row_id"])
            if row is None:
                raise PredictionsError(f"{p}: row {rec['row_id']!r} is not in this manifest split")
            kept.append(row)
            means.append(float(rec["mean"]))
            stds.append(float(rec["std"]))
            cells = [rec[f"bucket_{i}"] for i in range(N_BUCKETS)]
            probs.append([float(c) if c else math.nan for c in cells])
    if not kept or chosen is None:
        raise PredictionsError(f"{p}: no rows for model {model!r}")
    bp = np.asarray(probs)
    names = sorted({k for r in rows for k in r.attributes})
    attrs = {a: [r.attributes.get(a, "unknown") for r in kept] for a in names}
    return chosen, Estimates.build(
        [r.age for r in kept],
        means,
        stds,
        attrs,
        None if np.isnan(bp).any() else bp,
        subject_id=[r.subject_id for r in kept],
        row_id=[r.path for r in kept],
    )
