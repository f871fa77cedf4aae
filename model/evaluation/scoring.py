"""Score a manifest split with an inference engine, producing aligned `Estimates`.

The engine is taken as a Protocol so tests (and replays of recorded scores) can stand in for a real
checkpoint; the real one is `model.engine.InferenceEngine`.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from model.data.manifest import Manifest, ManifestRow
from model.evaluation.metrics import Estimates

BATCH = 64


class Scorer(Protocol):
    model_version: str

    def score(self, frames: Sequence[Any]) -> list[Any]: ...


def _frame(data: bytes, path: str) -> Any:
    from model.engine import EncodedFrame

    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return EncodedFrame(data=data, content_type=content_type)


def score_rows(engine: Scorer, manifest: Manifest, rows: Sequence[ManifestRow], batch: int = BATCH) -> Estimates:
    """Rows whose frame the engine refuses are counted in n_errors and dropped, not scored as 0."""
    true_age: list[float] = []
    means: list[float] = []
    stds: list[float] = []
    probs: list[tuple[float, ...] | None] = []
    kept: list[ManifestRow] = []
    errors = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        frames = [_frame(manifest.resolve(r).read_bytes(), r.path) for r in chunk]
        results = engine.score(frames)
        if len(results) != len(chunk):
            raise RuntimeError(f"engine returned {len(results)} results for {len(chunk)} frames")
        for row, res in zip(chunk, results, strict=True):
            if not hasattr(res, "mean"):
                errors += 1
                continue
            kept.append(row)
            true_age.append(row.age)
            means.append(float(res.mean))
            stds.append(float(res.std))
            probs.append(getattr(res, "bucket_probs", None))
    names = sorted({k for r in rows for k in r.attributes})
    attrs = {a: [r.attributes.get(a, "unknown") for r in kept] for a in names}
    bucket = None
    if kept and all(p is not None for p in probs):
        bucket = np.asarray(probs, dtype=np.float64)
    return Estimates.build(
        true_age,
        means,
        stds,
        attrs,
        bucket,
        n_errors=errors,
        subject_id=[r.subject_id for r in kept],
        row_id=[r.path for r in kept],
    )
