"""Helpers for tests and demos elsewhere in the project (worker integration tests, `make demo`).

Kept in the package, not under tests/, so other test suites and the demo import one tested path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.checkpoint import CheckpointError, read_meta
from model.data.synthetic import encode_jpeg, generate_dataset, render_face, sample_attributes

TINY_IMAGES = 4000
TINY_EPOCHS = 4


def train_tiny_checkpoint(out_dir: Path, *, seed: int = 0, model: str = "age_regressor") -> Path:
    """A small model trained in seconds that separates children (8-12) from adults (30-50) clearly.

    Calibrated like any trained model (train() stores the std scale and error floor in its metadata).
    Cached: a valid checkpoint for the same model and seed already in `out_dir` is returned as is.
    """
    from model.train import TrainSettings, train

    out_dir = Path(out_dir)
    best = out_dir / "run" / "best.safetensors"
    if best.exists():
        try:
            meta = read_meta(best)
            # Without "uncertainty" it was trained before calibration existed: retrain so it has one.
            if (meta.config.name == model and meta.extra.get("settings", {}).get("seed") == seed
                    and "uncertainty" in meta.extra):
                return best
        except CheckpointError:
            pass  # stale or damaged cache: retrain below
    manifest = out_dir / "data" / "manifest.csv"
    if not manifest.exists():
        generate_dataset(out_dir / "data", images=TINY_IMAGES, seed=seed, images_per_subject=4, size=64)
    run_dir = out_dir / "run"
    (run_dir / "recovery.safetensors").unlink(missing_ok=True)
    train(TrainSettings(data=str(manifest), out=str(run_dir), model=model, epochs=TINY_EPOCHS, batch_size=64,
                        seed=seed, version=f"tiny-s{seed}", warmup_steps=20, workers=2))
    return best


def synthetic_face_jpeg(age: float, *, seed: int, size: int = 64, **attrs: str) -> bytes:
    """One encoded synthetic face of the given age; unspecified attributes are drawn from the seed."""
    rng = np.random.default_rng(seed)
    full = {**sample_attributes(rng), **attrs}
    return encode_jpeg(render_face(age, full, rng, size=size), rng)
