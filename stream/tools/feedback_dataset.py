"""`agegate datasets from-feedback`: retained frames + verified ages from Kafka -> a training dataset.

Reads the retained-frames topic (latest value per key; a tombstone means erased, even before
compaction has removed the older values) and the age-feedback topic, joins them
(model/data/feedback.py) and writes OUT/manifest.csv, OUT/frames/ and OUT/feedback.json (counts
of users, frames and labels, and why the rest was skipped). Nothing here logs user ids or image bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.data.feedback import (
    DEFAULT_SUBJECT_KEY,
    RetainedFrame,
    Verification,
    join,
    latest_verifications,
    write_dataset,
)
from stream.adapters.codec import AvroCodec
from stream.adapters.registry import FEEDBACK, RETAINED_FRAME
from stream.adapters.topic_reader import read_to_end
from stream.adapters.topics import topic_name
from stream.config import Settings, load_settings
from stream.core.retention import key_user
from stream.errors import InvalidEvent

DAY_S = 86400.0


@dataclass(slots=True)
class ReadCounts:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def _seconds(value: Any) -> float:
    return float(value.timestamp()) if hasattr(value, "timestamp") else float(value) / 1000.0


def read_retained(settings: Settings, codec: AvroCodec, counts: ReadCounts, *, group: str) -> list[RetainedFrame]:
    """The frames still retained: last value per key, tombstoned keys dropped."""
    latest: dict[bytes, bytes | None] = {}
    for m in read_to_end(settings, topic_name("retained_frames", settings), group=group):
        key = m.key()
        if key is None or key_user(key) is None:
            counts.add("retained_bad_key")
            continue
        latest[key] = m.value()
    frames = []
    for value in latest.values():
        if value is None:
            counts.add("retained_erased")
            continue
        try:
            r = codec.decode(value, RETAINED_FRAME).record
        except InvalidEvent:
            counts.add("retained_undecodable")
            continue
        frames.append(
            RetainedFrame(
                str(r["user_id"]),
                str(r["event_id"]),
                str(r["frame_id"]),
                _seconds(r["occurred_at"]),
                str(r["content_type"]),
                bytes(r["data"]),
            )
        )
    return frames


def read_verifications(
    settings: Settings, codec: AvroCodec, counts: ReadCounts, *, group: str
) -> dict[str, Verification]:
    items = []
    for m in read_to_end(settings, topic_name("feedback", settings), group=group):
        try:
            r = codec.decode(m.value(), FEEDBACK).record
        except InvalidEvent:
            counts.add("feedback_undecodable")
            continue
        items.append(
            Verification(
                str(r["user_id"]), _seconds(r["occurred_at"]), float(r["verified_age"]), str(r.get("method") or "OTHER")
            )
        )
    return latest_verifications(items)


def build(
    settings: Settings,
    out: str | Path,
    *,
    now: float | None = None,
    subject_key: bytes = DEFAULT_SUBJECT_KEY,
    val: float = 0.1,
    test: float = 0.2,
    group: str = "agegate-datasets-from-feedback",
) -> dict[str, Any]:
    from stream.adapters.confluent_registry import registry_from_settings

    codec = AvroCodec(registry_from_settings(settings))
    counts = ReadCounts()
    frames = read_retained(settings, codec, counts, group=group)
    verifications = read_verifications(settings, codec, counts, group=group)
    labelled, report = join(
        frames,
        verifications,
        now=time.time() if now is None else now,
        retention_s=settings.retained_frames_retention_days * DAY_S,
        subject_key=subject_key,
    )
    report.reader = counts.counts
    return write_dataset(out, labelled, report, val=val, test=test)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder: manifest.csv, frames/, feedback.json")
    parser.add_argument(
        "--subject-key-file",
        type=Path,
        default=None,
        help="secret key of the subject hash (HMAC); without it a fixed public key is used",
    )
    parser.add_argument("--val", type=float, default=0.1, help="share of subjects in the validation split")
    parser.add_argument(
        "--test",
        type=float,
        default=0.2,
        help="share of subjects held out (the test split `agegate model promote --feedback` gates on)",
    )


def run(args: argparse.Namespace) -> int:
    key = args.subject_key_file.read_bytes().strip() if args.subject_key_file else DEFAULT_SUBJECT_KEY
    record = build(load_settings(), args.out, subject_key=key, val=args.val, test=args.test)
    print(json.dumps(record, indent=1, sort_keys=True))
    return 0
