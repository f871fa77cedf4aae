"""Loaders that turn real dataset layouts into manifests, and manifests into training tensors.

Real datasets lack subject ids; where that is so, each image is its own subject, which keeps
splits deterministic but cannot prevent the same person appearing in two splits (a documented
limit of those datasets, not of the splitter).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.data.manifest import Manifest, ManifestRow, check_subject_exclusive, split_for_subject
from model.decode import DecodeLimits, decode_rgb
from model.errors import ImageDecodeError

log = logging.getLogger(__name__)

UTK_GENDERS = {"0": "M", "1": "F"}
UTK_RACES = {"0": "white", "1": "black", "2": "asian", "3": "indian", "4": "other"}


def parse_utkface_name(name: str) -> ManifestRow | None:
    """`age_gender_race_datetime.jpg[.chip.jpg]` -> row, tolerating the dataset's malformed names.

    A few files miss the race field or carry an out-of-range code; those keep their age and get
    "unknown" for what is missing. A name without a usable age is skipped (None): no label, no row.
    """
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    try:
        age = float(int(parts[0]))
    except (ValueError, IndexError):
        return None
    if not 0 <= age <= 120:
        return None
    gender = UTK_GENDERS.get(parts[1], "unknown") if len(parts) > 1 else "unknown"
    race = UTK_RACES.get(parts[2], "unknown") if len(parts) > 3 else "unknown"
    return ManifestRow(
        path=name, age=age, subject_id=stem, split=split_for_subject(stem), attributes={"sex": gender, "race": race}
    )


def load_utkface(folder: str | Path) -> Manifest:
    folder = Path(folder)
    rows, skipped = [], 0
    for file in sorted(folder.rglob("*.jpg")):
        row = parse_utkface_name(file.name)
        if row is None:
            skipped += 1
            continue
        rel = file.relative_to(folder).as_posix()
        rows.append(ManifestRow(rel, row.age, row.subject_id, row.split, row.attributes))
    if skipped:
        log.warning("utkface: skipped %d files without a parsable age in %s", skipped, folder)
    if not rows:
        raise ValueError(f"{folder}: no UTKFace images found (expected age_gender_race_datetime.jpg)")
    return Manifest(root=folder, rows=tuple(rows), source=folder)


_APPA_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def load_appa_real(folder: str | Path, *, face_crops: bool = True) -> Manifest:
    """APPA-REAL: gt_avg_{train,valid,test}.csv + images in {train,valid,test}/.

    The real age is the label; the apparent age (mean and std of human raters) is kept apart as
    attributes, never mixed into the label. The dataset's own split is kept.
    """
    folder = Path(folder)
    rows: list[ManifestRow] = []
    for part, split in _APPA_SPLITS.items():
        gt = folder / f"gt_avg_{part}.csv"
        if not gt.is_file():
            continue
        extra = _appa_categories(folder / f"allcategories_{part}.csv")
        with gt.open(encoding="utf-8", newline="") as f:
            for n, rec in enumerate(csv.DictReader(f), 2):
                try:
                    name, real = rec["file_name"], float(rec["real_age"])
                except (KeyError, ValueError, TypeError):
                    raise ValueError(f"{gt}:{n}: needs file_name and a numeric real_age") from None
                rel = f"{part}/{name}"
                if face_crops and (folder / f"{rel}_face.jpg").is_file():
                    rel = f"{rel}_face.jpg"
                attrs = {
                    "apparent_age": rec.get("apparent_age_avg", ""),
                    "apparent_age_std": rec.get("apparent_age_std", ""),
                }
                attrs.update(extra.get(name, {}))
                rows.append(ManifestRow(rel, real, f"appa-{part}-{Path(name).stem}", split, attrs))
    if not rows:
        raise ValueError(f"{folder}: no APPA-REAL gt_avg_*.csv files found")
    check_subject_exclusive(rows, where=str(folder))
    return Manifest(root=folder, rows=tuple(rows), source=folder)


def _appa_categories(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        return {
            rec["file"]: {k: v for k, v in rec.items() if k in ("gender", "race", "makeup", "time", "happiness")}
            for rec in csv.DictReader(f)
            if rec.get("file")
        }


@dataclass(frozen=True, slots=True)
class SplitTensors:
    """Decoded images of one split held in memory (uint8 saves 4x over float)."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    ages: torch.Tensor  # (N,) float32
    rows: tuple[ManifestRow, ...]  # rows that decoded, aligned with images


def load_split_tensors(
    manifest: Manifest, rows: Sequence[ManifestRow], size: int, *, workers: int = 2, limits: DecodeLimits | None = None
) -> SplitTensors:
    """Decode rows with the same decoder the engine uses, so training sees what serving sees."""
    limits = limits or DecodeLimits()

    def one(row: ManifestRow) -> np.ndarray | None:
        path = manifest.resolve(row)
        ctype = {".png": "image/png", ".webp": "image/webp"}.get(path.suffix.lower(), "image/jpeg")
        try:
            return decode_rgb(path.read_bytes(), ctype, size, limits)
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping %s: %s", path, exc)
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        arrays = list(pool.map(one, rows, chunksize=64))
    kept = [(r, a) for r, a in zip(rows, arrays, strict=True) if a is not None]
    if not kept:
        return SplitTensors(torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0), ())
    images = torch.from_numpy(np.stack([a for _, a in kept])).permute(0, 3, 1, 2).contiguous()
    ages = torch.tensor([r.age for r, _ in kept], dtype=torch.float32)
    return SplitTensors(images, ages, tuple(r for r, _ in kept))
