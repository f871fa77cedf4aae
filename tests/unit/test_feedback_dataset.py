"""Feedback -> training data: labels at the frame's time, keyed subject hashes, subject-exclusive
splits, and a report that says why every unused frame was skipped."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from model.data.feedback import (
    EXPIRED,
    IMPLAUSIBLE,
    NO_VERIFICATION,
    YEAR_S,
    RetainedFrame,
    Verification,
    join,
    latest_verifications,
    subject_of,
    write_dataset,
)
from model.data.manifest import load_manifest
from stream.core.retention import consented, frame_key, key_user, retained_records

NOW = 1_800_000_000.0
DAY = 86400.0


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(buf, "JPEG")
    return buf.getvalue()


def _frame(user: str, i: int, at: float) -> RetainedFrame:
    return RetainedFrame(user, f"e-{user}-{i}", "f0", at, "image/jpeg", _jpeg(10 * i % 250))


def test_label_is_the_verified_age_carried_back_to_the_frame() -> None:
    frames = [_frame("alice", 1, NOW - YEAR_S)]  # a year before the check
    labelled, report = join(
        frames, {"alice": Verification("alice", NOW, 19.0, "ID_CHECK")}, now=NOW, retention_s=400 * DAY
    )
    assert len(labelled) == 1
    assert labelled[0].age == pytest.approx(18.0)
    assert labelled[0].subject_id == subject_of("alice")
    assert "alice" not in labelled[0].subject_id
    assert report.frames_used == 1


def test_every_skipped_frame_has_a_reason() -> None:
    frames = [
        _frame("alice", 1, NOW - DAY),
        _frame("alice", 2, NOW - 2 * DAY),
        _frame("bob", 1, NOW - DAY),  # never verified
        _frame("carol", 1, NOW - 200 * DAY),  # older than the retention
        _frame("dave", 1, NOW - 50 * DAY),  # verified at 0.05 years: 50 days earlier is before birth
    ]
    verified = {
        "alice": Verification("alice", NOW, 30.0),
        "carol": Verification("carol", NOW, 40.0),
        "dave": Verification("dave", NOW, 0.05),
        "erin": Verification("erin", NOW, 22.0),
    }
    labelled, report = join(frames, verified, now=NOW, retention_s=100 * DAY)
    assert {f.frame.user_id for f in labelled} == {"alice"}
    assert report.frames_read == 5
    assert report.frames_used == 2
    assert report.skipped_frames == {NO_VERIFICATION: 1, EXPIRED: 1, IMPLAUSIBLE: 1}
    assert report.skipped_users == {NO_VERIFICATION: 1, EXPIRED: 1, IMPLAUSIBLE: 1}
    assert report.users_with_frames == 4
    assert report.users_verified == 4
    assert report.users_used == 1
    assert report.verified_without_frames == 1  # erin: no consent (or every frame gone)


def test_the_latest_verification_wins() -> None:
    got = latest_verifications(
        [Verification("a", NOW - DAY, 17.0), Verification("a", NOW, 21.0), Verification("b", NOW, 30.0)]
    )
    assert got["a"].verified_age == 21.0


def test_subject_hash_depends_on_the_key() -> None:
    assert subject_of("alice") != subject_of("alice", b"another key")
    assert subject_of("alice") == subject_of("alice")


def test_dataset_is_subject_exclusive_content_hashed_and_free_of_user_ids(tmp_path: Path) -> None:
    users = [f"user-{i}" for i in range(40)]
    frames = [_frame(u, k, NOW - k * DAY) for u in users for k in range(1, 4)]
    verified = {u: Verification(u, NOW, 20.0 + i % 10) for i, u in enumerate(users)}
    labelled, report = join(frames, verified, now=NOW, retention_s=100 * DAY)
    record = write_dataset(tmp_path / "a", labelled, report, val=0.2, test=0.3)
    again = write_dataset(tmp_path / "b", labelled, report, val=0.2, test=0.3)
    assert record["content_hash"] == again["content_hash"]
    manifest = load_manifest(tmp_path / "a" / "manifest.csv")  # refuses a subject in two splits
    assert len(manifest.rows) == 120
    assert record["splits"]["test"]["subjects"] > 0
    assert sum(s["frames"] for s in record["splits"].values()) == 120
    text = (tmp_path / "a" / "manifest.csv").read_text() + (tmp_path / "a" / "feedback.json").read_text()
    assert not any(u in text for u in users)
    assert all(manifest.resolve(r).is_file() for r in manifest.rows)


def test_retained_frame_keys_and_consent() -> None:
    key = frame_key("user|1", "e1", "f/0")
    assert key_user(key) == "user|1"
    assert key_user(b"not json") is None
    assert key_user(b'["only", "two"]') is None
    assert key_user(None) is None
    assert consented({"consent_model_improvement": True})
    assert not consented({"consent_model_improvement": None})
    assert not consented({})


def test_only_scored_frames_of_consenting_users_are_retained() -> None:
    import datetime as dt

    when = dt.datetime.fromtimestamp(NOW, dt.UTC)
    event: dict[str, Any] = {
        "user_id": "u1",
        "event_id": "e1",
        "occurred_at": when,
        "frames": [{"frame_id": "a"}, {"frame_id": "b"}, {"frame_id": "c"}],
    }
    got = retained_records(**event, consent=True, scored=[(b"A", "image/jpeg"), None, (b"C", "image/png")])
    assert [k for k, _ in got] == [frame_key("u1", "e1", "a"), frame_key("u1", "e1", "c")]
    assert got[1][1] == {
        "user_id": "u1",
        "event_id": "e1",
        "frame_id": "c",
        "occurred_at": when,
        "content_type": "image/png",
        "data": b"C",
    }
    assert retained_records(**event, consent=False, scored=[(b"A", "image/jpeg")] * 3) == []
