"""Dead letters from a broken deployment (a registry that lacks the producers' schema id) are
redriven after the fix, and every one of them then gets a decision."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from model.engine import InferenceEngine
from stream.adapters.codec import AvroCodec
from stream.adapters.registry import SIGNUP, LocalRegistry, RegisteredSchema
from stream.adapters.topics import TopicAdmin, topic_names
from stream.config import Settings
from stream.core.policy import load_policy
from stream.runners.replay import PartitionWindow
from stream.tools import events
from stream.tools.redrive import (
    REDRIVE_HEADER,
    all_dead_letters,
    latest_per_event,
    read_dead_letters,
    redrive,
    summarize,
)
from tests.integration.replay_support import at, produce, run_live, source_windows, tiny_checkpoint

pytestmark = pytest.mark.integration


NEWEST_SIGNUP_ID = LocalRegistry().writer_for(SIGNUP).schema_id


class StaleRegistry(LocalRegistry):
    """The broken deployment: it does not know the newest SignupEvent schema id yet."""

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        return None if schema_id == NEWEST_SIGNUP_ID else super().by_id(schema_id)


async def test_broken_schema_dead_letters_are_redriven_and_decided(
    kafka_settings: Settings, redis_url: str, tmp_path: object
) -> None:
    import dataclasses
    from pathlib import Path

    settings = dataclasses.replace(
        kafka_settings,
        redis_url=redis_url,
        inference_device="cpu",
        inference_threads=1,
        redis_key_prefix=f"rd{uuid.uuid4().hex[:8]}",
    )
    TopicAdmin(settings).create()
    engine = InferenceEngine.from_checkpoint(tiny_checkpoint(Path(str(tmp_path))), device="cpu", threads=1)
    users = [f"u{i}" for i in range(5)]
    produce(
        settings,
        [
            ("signups", events.signup(u, at=at(i), declared_age=30, event_id=str(uuid.uuid4())))
            for i, u in enumerate(users)
        ],
    )
    # A healthy upload too: it must not be selected by --reason, nor redriven.
    produce(settings, [("uploads", events.upload("ok", at=at(9), surface="profile_photo"))])
    before = source_windows(settings)
    broken = await run_live(settings, engine, load_policy(None), codec=AvroCodec(StaleRegistry()))
    assert sorted(o.kind for o in broken) == ["dead_letter"] * 5 + ["decision"]

    summary = summarize(read_dead_letters(settings))
    assert summary.keys() == {"unknown_schema_id"}
    assert summary["unknown_schema_id"]["count"] == 5
    assert summary["unknown_schema_id"]["sources"] == [topic_names(settings)["signups"]]
    assert list(read_dead_letters(settings, reason="corrupt")) == []
    assert list(read_dead_letters(settings, since_ms=2**62)) == []

    result = redrive(settings, read_dead_letters(settings, reason="unknown_schema_id"))
    assert (result.selected, result.redriven, result.failed, result.skipped) == (5, 5, (), ())

    # The fixed deployment (full registry) consumes only what the redrive appended.
    ends = {(w.topic, w.partition): w.end for w in before}
    redriven = [
        PartitionWindow(w.topic, w.partition, ends[(w.topic, w.partition)], w.end) for w in source_windows(settings)
    ]
    assert sum(w.end - w.start for w in redriven) == 5
    fixed = await run_live(settings, engine, load_policy(None), windows=redriven)
    assert [o.kind for o in fixed] == ["decision"] * 5
    assert sorted(o.decision["user_id"] for o in fixed if o.decision) == users

    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(settings.kafka_client_config() | {"group.id": "check"})
    c.assign([TopicPartition(w.topic, w.partition, w.start) for w in redriven if w.end > w.start])
    got: list[Any] = []
    while len(got) < 5:
        got += [m for m in c.consume(5, 5.0) if m.error() is None]
    c.close()
    assert all(dict(m.headers() or []).get(REDRIVE_HEADER) for m in got)


def _appended(settings: Settings, before: list[PartitionWindow]) -> list[PartitionWindow]:
    ends = {(w.topic, w.partition): w.end for w in before}
    return [
        PartitionWindow(w.topic, w.partition, ends[(w.topic, w.partition)], w.end) for w in source_windows(settings)
    ]


async def test_redrive_repeated_over_an_unfixed_cause_selects_each_event_once(
    kafka_settings: Settings, redis_url: str, tmp_path: object
) -> None:
    """Three redrives while the registry is still broken: every run selects the 4 events once (not
    4 -> 8 -> 16), each new dead letter keeps the event's origin and first-seen time and counts its redrives."""
    import dataclasses
    from pathlib import Path

    settings = dataclasses.replace(
        kafka_settings,
        redis_url=redis_url,
        inference_device="cpu",
        inference_threads=1,
        redis_key_prefix=f"rr{uuid.uuid4().hex[:8]}",
    )
    TopicAdmin(settings).create()
    engine = InferenceEngine.from_checkpoint(tiny_checkpoint(Path(str(tmp_path))), device="cpu", threads=1)
    broken = AvroCodec(StaleRegistry())
    users = [f"u{i}" for i in range(4)]
    produce(
        settings,
        [
            ("signups", events.signup(u, at=at(i), declared_age=30, event_id=str(uuid.uuid4())))
            for i, u in enumerate(users)
        ],
    )
    before = source_windows(settings)
    first = await run_live(settings, engine, load_policy(None), codec=broken)
    assert [o.kind for o in first] == ["dead_letter"] * 4
    original = {dl.lineage.origin: dl.lineage for dl in all_dead_letters(settings)}
    assert len(original) == 4
    assert all(lin.redrives == 0 for lin in original.values())

    for run in (1, 2, 3):
        selected = read_dead_letters(settings, reason="unknown_schema_id")
        assert len(selected) == 4, f"run {run}: each event once"
        assert {dl.copies for dl in selected} == {run}
        result = redrive(settings, selected)
        assert (result.selected, result.redriven, result.failed, result.skipped) == (4, 4, (), ())
        # The cause is not fixed: the copies fail again.
        windows = _appended(settings, before)
        before = source_windows(settings)
        assert sum(w.end - w.start for w in windows) == 4, "one copy per event, not one per dead letter"
        again = await run_live(settings, engine, load_policy(None), codec=broken, windows=windows)
        assert [o.kind for o in again] == ["dead_letter"] * 4

    everything = list(all_dead_letters(settings))
    assert len(everything) == 4 * 4, "dead letters grow by one per event per run: 4, 8, 12, 16"
    latest = latest_per_event(everything)
    assert {dl.lineage.origin: dl.lineage for dl in latest} == {
        origin: dataclasses.replace(lin, redrives=3) for origin, lin in original.items()
    }, "origin and first-seen time kept; three redrives counted"
    row = summarize(latest)["unknown_schema_id"]
    assert (row["count"], row["copies"], row["max_redrives"]) == (4, 16, 3)
