"""Dataset manifests: one row per image with its true age, subject and attributes.

Format (CSV or JSONL, chosen by suffix): `path` (relative to the manifest's folder), `age` (true
age in years), `subject_id`, `split` (train/val/test), and any further columns as attributes
(e.g. `sex`, `skin_tone`). Splits come from a hash of the subject id, so they are deterministic
and one person never sits in both train and test. The content hash identifies the exact data a
model was trained or evaluated on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
REQUIRED = ("path", "age", "subject_id")
_SPLIT_SALT = "agegate-split-v1"


@dataclass(frozen=True, slots=True)
class ManifestRow:
    path: str
    age: float
    subject_id: str
    split: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Manifest:
    root: Path  # folder that row paths are relative to
    rows: tuple[ManifestRow, ...]
    source: Path | None = None

    def split(self, name: str) -> list[ManifestRow]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        return [r for r in self.rows if r.split == name]

    def resolve(self, row: ManifestRow) -> Path:
        return self.root / row.path

    def attribute_names(self) -> list[str]:
        return sorted({k for r in self.rows for k in r.attributes})

    @property
    def content_hash(self) -> str:
        return content_hash(self)


def split_for_subject(subject_id: str, *, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic split from a hash of the subject id alone (stable across runs and machines)."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{subject_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def rows_for_split(manifest: Manifest, split: str) -> list[ManifestRow]:
    return manifest.split(split)


def content_hash(manifest: Manifest, *, include_files: bool = False) -> str:
    """sha256 over the canonical rows (order-independent); with include_files, over image bytes too."""
    digest = hashlib.sha256()
    for row in sorted(manifest.rows, key=lambda r: (r.path, r.subject_id)):
        record = [row.path, repr(float(row.age)), row.subject_id, row.split, sorted(row.attributes.items())]
        digest.update(json.dumps(record).encode())
        digest.update(b"\n")
        if include_files:
            digest.update(hashlib.sha256(manifest.resolve(row).read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def _row_from_record(record: dict[str, Any], where: str) -> ManifestRow:
    missing = [c for c in REQUIRED if record.get(c) in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing required column(s) {missing}")
    try:
        age = float(record["age"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: age {record['age']!r} is not a number") from None
    if not math.isfinite(age) or age < 0:
        raise ValueError(f"{where}: age {age} is not a finite non-negative number")
    subject = str(record["subject_id"])
    split = str(record.get("split") or split_for_subject(subject))
    if split not in SPLITS:
        raise ValueError(f"{where}: split {split!r} is not one of {SPLITS}")
    attrs = {k: str(v) for k, v in record.items() if k not in (*REQUIRED, "split", "attributes") and v is not None}
    nested = record.get("attributes")
    if isinstance(nested, dict):
        attrs.update({k: str(v) for k, v in nested.items()})
    return ManifestRow(path=str(record["path"]), age=age, subject_id=subject, split=split, attributes=attrs)


def load_manifest(path: str | Path) -> Manifest:
    """Read a CSV or JSONL manifest; rows missing `split` get the subject-hash split."""
    path = Path(path)
    rows: list[ManifestRow] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{n}: invalid JSON: {exc}") from None
                    rows.append(_row_from_record(record, f"{path}:{n}"))
    elif path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for n, record in enumerate(reader, 2):
                rows.append(_row_from_record(dict(record), f"{path}:{n}"))
    else:
        raise ValueError(f"{path}: manifest must be .csv or .jsonl, got {path.suffix!r}")
    check_subject_exclusive(rows, where=str(path))
    return Manifest(root=path.parent, rows=tuple(rows), source=path)


def check_subject_exclusive(rows: Iterable[ManifestRow], *, where: str = "manifest") -> None:
    seen: dict[str, str] = {}
    for row in rows:
        prev = seen.setdefault(row.subject_id, row.split)
        if prev != row.split:
            raise ValueError(f"{where}: subject {row.subject_id!r} is in both {prev!r} and {row.split!r}")


def write_manifest(path: str | Path, rows: Sequence[ManifestRow]) -> Path:
    """Write CSV or JSONL by suffix; attribute columns are the union over rows, sorted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attr_names = sorted({k for r in rows for k in r.attributes})
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for r in rows:
                record = {"path": r.path, "age": r.age, "subject_id": r.subject_id, "split": r.split, **r.attributes}
                f.write(json.dumps(record) + "\n")
        elif path.suffix.lower() == ".csv":
            writer = csv.writer(f)
            writer.writerow([*REQUIRED, "split", *attr_names])
            for r in rows:
                writer.writerow([r.path, r.age, r.subject_id, r.split, *(r.attributes.get(a, "") for a in attr_names)])
        else:
            raise ValueError(f"{path}: manifest must be .csv or .jsonl, got {path.suffix!r}")
    tmp.replace(path)
    return path
