"""Training data from verified feedback: consented retained frames joined with verified ages.

Pure logic (no Kafka): `join` takes the frames still retained and each user's verified age and
returns labelled rows plus a report of what was used and why the rest was skipped. `write_dataset`
stores the images and a manifest (model/data/manifest.py) with subject-exclusive splits.

- Label: the verified age carried back to the frame's time (age at verification minus the years
  between the frame and the verification): the frame shows the person as they were then.
- Subject: a keyed hash of the user id ("u-" + 20 hex digits of HMAC-SHA256). The user id never
  reaches the manifest; without the key, hashes cannot be reversed by enumerating user ids.
- Splits: from the subject hash (split_for_subject), so all frames of one person land in one split
  and the held-out (test) split is people the fine-tuned model never saw.
- The latest verification of a user wins (a verified age is authoritative and may be corrected).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.data.manifest import ManifestRow, content_hash, load_manifest, split_for_subject, write_manifest

YEAR_S = 365.2425 * 86400.0
DEFAULT_SUBJECT_KEY = b"agegate-feedback-subject-v1"
MAX_AGE_YEARS = 120.0
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}

# Why a frame was not used (report keys).
NO_VERIFICATION = "no_verification"  # the user's age was never verified
EXPIRED = "expired"  # older than the retention window (the topic deletes it soon)
IMPLAUSIBLE = "implausible_label"  # carried back, the verified age falls outside [0, 120]
UNSUPPORTED_TYPE = "unsupported_content_type"


@dataclass(frozen=True, slots=True)
class RetainedFrame:
    user_id: str
    event_id: str
    frame_id: str
    occurred_at: float  # epoch seconds
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Verification:
    user_id: str
    occurred_at: float  # epoch seconds
    verified_age: float  # years at occurred_at
    method: str = "OTHER"


@dataclass(frozen=True, slots=True)
class LabelledFrame:
    frame: RetainedFrame
    age: float
    subject_id: str
    method: str


@dataclass(slots=True)
class FeedbackReport:
    frames_read: int = 0
    frames_used: int = 0
    users_with_frames: int = 0
    users_verified: int = 0  # verified ages found (labels)
    users_used: int = 0
    verified_without_frames: int = 0  # no consent, or every frame expired or erased
    skipped_frames: dict[str, int] = field(default_factory=dict)
    skipped_users: dict[str, int] = field(default_factory=dict)
    reader: dict[str, int] = field(default_factory=dict)  # the topic reader's own counts (erased, undecodable)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames_read": self.frames_read,
            "frames_used": self.frames_used,
            "users_with_frames": self.users_with_frames,
            "users_verified": self.users_verified,
            "users_used": self.users_used,
            "verified_without_frames": self.verified_without_frames,
            "skipped_frames": dict(sorted(self.skipped_frames.items())),
            "skipped_users": dict(sorted(self.skipped_users.items())),
            "reader": dict(sorted(self.reader.items())),
        }


def subject_of(user_id: str, key: bytes = DEFAULT_SUBJECT_KEY) -> str:
    return "u-" + hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:20]


def latest_verifications(items: Iterable[Verification]) -> dict[str, Verification]:
    out: dict[str, Verification] = {}
    for v in items:
        if v.user_id not in out or v.occurred_at >= out[v.user_id].occurred_at:
            out[v.user_id] = v
    return out


def join(
    frames: Iterable[RetainedFrame],
    verifications: Mapping[str, Verification],
    *,
    now: float,
    retention_s: float,
    subject_key: bytes = DEFAULT_SUBJECT_KEY,
) -> tuple[list[LabelledFrame], FeedbackReport]:
    """Label every usable frame; count the others by reason (frames and users)."""
    report = FeedbackReport(users_verified=len(verifications))
    out: list[LabelledFrame] = []
    users: set[str] = set()
    used_users: set[str] = set()
    user_reasons: dict[str, set[str]] = {}
    for f in frames:
        report.frames_read += 1
        users.add(f.user_id)
        reason = ""
        v = verifications.get(f.user_id)
        if f.occurred_at < now - retention_s:
            reason = EXPIRED
        elif v is None:
            reason = NO_VERIFICATION
        elif f.content_type not in EXTENSIONS:
            reason = UNSUPPORTED_TYPE
        else:
            age = v.verified_age - (v.occurred_at - f.occurred_at) / YEAR_S
            if not 0.0 <= age <= MAX_AGE_YEARS:
                reason = IMPLAUSIBLE
            else:
                out.append(LabelledFrame(f, age, subject_of(f.user_id, subject_key), v.method))
                used_users.add(f.user_id)
        if reason:
            report.skipped_frames[reason] = report.skipped_frames.get(reason, 0) + 1
            user_reasons.setdefault(f.user_id, set()).add(reason)
    report.frames_used = len(out)
    report.users_with_frames = len(users)
    report.users_used = len(used_users)
    report.verified_without_frames = len(set(verifications) - users)
    for user, reasons in user_reasons.items():
        if user not in used_users:  # a user none of whose frames could be used, by their first reason
            key = sorted(reasons)[0]
            report.skipped_users[key] = report.skipped_users.get(key, 0) + 1
    return out, report


def write_dataset(
    out_dir: str | Path,
    labelled: Iterable[LabelledFrame],
    report: FeedbackReport,
    *,
    val: float = 0.1,
    test: float = 0.2,
) -> dict[str, Any]:
    """OUT/frames/<content hash>.<ext>, OUT/manifest.csv and OUT/feedback.json (the report with the
    manifest's content hash and split sizes). Identical bytes are stored once."""
    out = Path(out_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    rows = []
    for item in labelled:
        digest = hashlib.sha256(item.frame.data).hexdigest()[:32]
        rel = f"frames/{digest}.{EXTENSIONS[item.frame.content_type]}"
        target = out / rel
        if not target.exists():
            target.write_bytes(item.frame.data)
        split = split_for_subject(item.subject_id, val=val, test=test)
        rows.append(ManifestRow(rel, round(item.age, 4), item.subject_id, split, {"verification": item.method}))
    rows.sort(key=lambda r: (r.subject_id, r.path))
    path = write_manifest(out / "manifest.csv", rows)
    manifest = load_manifest(path)  # also checks subject exclusivity
    splits = {
        s: {"frames": len(manifest.split(s)), "subjects": len({r.subject_id for r in manifest.split(s)})}
        for s in ("train", "val", "test")
    }
    record = {
        "name": "agegate-feedback",
        "manifest": path.name,
        "content_hash": content_hash(manifest),
        "content_hash_with_files": content_hash(manifest, include_files=True),
        "splits": splits,
        "split_fractions": {"val": val, "test": test},
        "report": report.to_dict(),
    }
    (out / "feedback.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    return record
