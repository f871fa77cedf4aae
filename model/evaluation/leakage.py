"""Training lineage and the leakage guard: was the benchmark (partly) the training data?

A checkpoint records what it was trained on: the manifest hash, the synthetic generator's seeds, and
short fingerprints of every training/validation image (content hash) and subject. Evaluation refuses
a benchmark that shares any image, any subject or a generator seed with them (unless forced, and then
the report says so), because an in-sample score is not a release number: `agegate synth --seed 0`
reproduces the training set byte for byte, and a memorised face scores perfectly.

Fingerprints are the first 16 hex digits of a SHA-256 (64 bits): collisions among a few hundred
thousand items are negligible, and subject ids are not stored in clear in the checkpoint.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from model.data.manifest import Manifest, ManifestRow

GENERATOR = "agegate-synthetic"
# model/data/synthetic.py names subject i of seed S "sS-000123"
_SYNTHETIC_SUBJECT = re.compile(r"^s(\d+)-\d{6}$")
FINGERPRINT_HEX = 16


class LeakageError(ValueError):
    """The benchmark shares images, subjects or a generator seed with the model's training data."""


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:FINGERPRINT_HEX]


def generator_seeds(subject_ids: Iterable[str]) -> list[int]:
    """Seeds of the synthetic generator that produced these subjects (none for other data)."""
    return sorted({int(m.group(1)) for s in subject_ids if (m := _SYNTHETIC_SUBJECT.match(s))})


def fingerprints(manifest: Manifest, rows: Sequence[ManifestRow]) -> dict[str, Any]:
    """Subjects, image contents and generator seeds of these rows."""
    return {
        "subjects": sorted({fingerprint(r.subject_id.encode()) for r in rows}),
        "images": sorted({fingerprint(manifest.resolve(r).read_bytes()) for r in rows}),
        "generator": {"name": GENERATOR, "seeds": generator_seeds(r.subject_id for r in rows)},
    }


def training_lineage(manifest: Manifest, rows: Sequence[ManifestRow], manifest_hash: str) -> dict[str, Any]:
    """What a checkpoint stores about the data it saw (training and validation rows)."""
    return {
        "manifest": str(manifest.source or ""),
        "manifest_hash": manifest_hash,
        "rows": len(rows),
        **fingerprints(manifest, rows),
    }


def overlap(lineage: Mapping[str, Any] | None, benchmark: Mapping[str, Any]) -> dict[str, Any]:
    """What the benchmark shares with the training data; `checked` False when the checkpoint has no lineage."""
    if not lineage:
        return {
            "checked": False,
            "shared_images": None,
            "shared_subjects": None,
            "shared_generator_seeds": None,
            "leaks": False,
        }
    images = len(set(lineage.get("images", [])) & set(benchmark["images"]))
    subjects = len(set(lineage.get("subjects", [])) & set(benchmark["subjects"]))
    seeds = sorted(set(lineage.get("generator", {}).get("seeds", [])) & set(benchmark["generator"]["seeds"]))
    return {
        "checked": True,
        "training_manifest_hash": lineage.get("manifest_hash"),
        "shared_images": images,
        "shared_subjects": subjects,
        "shared_generator_seeds": seeds,
        "leaks": bool(images or subjects or seeds),
    }


def describe(found: Mapping[str, Any]) -> str:
    return (
        f"{found['shared_images']} images, {found['shared_subjects']} subjects and generator seeds "
        f"{found['shared_generator_seeds']} shared with the training data"
    )


def lineage_of(checkpoint: str | Path) -> dict[str, Any] | None:
    from model.checkpoint import read_meta

    lin = read_meta(checkpoint).extra.get("lineage")
    return dict(lin) if isinstance(lin, Mapping) else None
