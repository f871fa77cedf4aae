"""Helpers for tests and demos elsewhere in the project (worker integration tests, `make demo`).

Kept in the package, not under tests/, so other test suites and the demo import one tested path.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from model.checkpoint import read_meta
from model.data.synthetic import encode_jpeg, generate_dataset, render_face, sample_attributes
from model.errors import CheckpointError

TINY_IMAGES = 4000
TINY_EPOCHS = 4
# A separate calibration set (train --calibration-data): the val split of TINY_IMAGES holds ~80
# subjects, too few to measure the floor ratio (its share of persistent error) to a few points.
TINY_CALIBRATION_IMAGES = 8000
# Its seed is offset so that its subjects (ids "s<seed>-<index>") are never the training set's.
CALIBRATION_SEED_OFFSET = 7_000_000


def train_tiny_checkpoint(out_dir: Path, *, seed: int = 0, model: str = "age_regressor") -> Path:
    """A small model trained in seconds that separates children (8-12) from adults (30-50) clearly.

    Calibrated like any trained model (train() stores the std scale and error floor in its metadata),
    on a separate synthetic calibration set of TINY_CALIBRATION_IMAGES. Cached: a valid checkpoint
    for the same model and seed already in `out_dir` is returned as is.
    """
    from model.train import TrainSettings, train

    out_dir = Path(out_dir)
    best = out_dir / "run" / "best.safetensors"
    if best.exists():
        try:
            meta = read_meta(best)
            # Without "uncertainty" it was trained before calibration existed: retrain so it has one.
            if (
                meta.config.name == model
                and meta.extra.get("settings", {}).get("seed") == seed
                and "floor_ratio" in meta.extra.get("uncertainty", {})
            ):
                return best
        except CheckpointError:
            pass  # stale or damaged cache: retrain below
    manifest = out_dir / "data" / "manifest.csv"
    if not manifest.exists():
        generate_dataset(out_dir / "data", images=TINY_IMAGES, seed=seed, images_per_subject=4, size=64)
    calibration = out_dir / "calibration" / "manifest.csv"
    if not calibration.exists():
        generate_dataset(
            out_dir / "calibration",
            images=TINY_CALIBRATION_IMAGES,
            seed=seed + CALIBRATION_SEED_OFFSET,
            images_per_subject=4,
            size=64,
        )
    run_dir = out_dir / "run"
    (run_dir / "recovery.safetensors").unlink(missing_ok=True)
    train(
        TrainSettings(
            data=str(manifest),
            out=str(run_dir),
            model=model,
            epochs=TINY_EPOCHS,
            batch_size=64,
            seed=seed,
            version=f"tiny-s{seed}",
            warmup_steps=20,
            workers=2,
            calibration_data=str(calibration),
        )
    )
    return best


def synthetic_face_jpeg(age: float, *, seed: int, size: int = 64, **attrs: str) -> bytes:
    """One encoded synthetic face of the given age; unspecified attributes are drawn from the seed."""
    rng = np.random.default_rng(seed)
    full = {**sample_attributes(rng), **attrs}
    return encode_jpeg(render_face(age, full, rng, size=size), rng)


def stored_as(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for an upright (H, W, C) image when it writes EXIF `orientation`.

    Written from the EXIF 2.3 definitions (where the stored 0th row and 0th column lie in the
    visual image), independently of Pillow, so tests of the decoder do not check Pillow against itself.
    """
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # 0th row top, 0th column right: mirrored
        3: lambda a: a[::-1, ::-1],  # 0th row bottom, 0th column right: upside down
        4: lambda a: a[::-1, :],  # 0th row bottom, 0th column left: flipped vertically
        5: lambda a: a.transpose(1, 0, 2),  # 0th row left, 0th column top
        6: lambda a: np.rot90(a, 1),  # 0th row right, 0th column top: phone held upright
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # 0th row right, 0th column bottom
        8: lambda a: np.rot90(a, -1),  # 0th row left, 0th column bottom
    }
    return np.ascontiguousarray(transforms[orientation](upright))


def encode_with_orientation(upright: np.ndarray, orientation: int, fmt: str = "JPEG", **save: object) -> bytes:
    """Encode `upright` as a camera would with EXIF Orientation `orientation` (pixels stored turned)."""
    exif = Image.Exif()
    exif[0x0112] = orientation  # ExifTags.Base.Orientation
    buf = io.BytesIO()
    Image.fromarray(stored_as(upright, orientation)).save(buf, fmt, exif=exif.tobytes(), **save)
    return buf.getvalue()


def synthetic_face(age: float, *, seed: int, size: int = 64, **attrs: str) -> np.ndarray:
    """One upright synthetic face of the given age as (size, size, 3) uint8 pixels."""
    rng = np.random.default_rng(seed)
    full = {**sample_attributes(rng), **attrs}
    return np.asarray(render_face(age, full, rng, size=size).convert("RGB"), dtype=np.uint8)
