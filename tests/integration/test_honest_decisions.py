"""Decisions whose P(age >= threshold) is honest, through the real worker, Kafka and Redis.

- One face is one person: a 16-year-old whose photos look 21 uploads 40 times to adult content and is
  never ALLOWed (the belief's std never falls below the model's error floor), while an adult who
  looks their age is ALLOWed once the evidence allows it; the same for a 15-year-old who looks 19
  on messaging from unknown adults (threshold 16).
- The producer's clock never buys an ALLOW: for verified, estimated and declared users, the same
  event dated ten years ahead or ten years back decides no more permissively than dated now.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.testing import synthetic_face_jpeg
from stream.adapters.belief_store import user_key
from stream.adapters.codec import AvroCodec
from stream.config import Settings
from stream.core.policy import STRICTNESS, Action
from stream.core.subjects import FEEDBACK, SIGNUP, UPLOAD
from stream.tools import events
from stream.tools.loadgen import SyntheticEvent
from stream.tools.localrun import OutputReader, WorkerProcess, worker_env
from stream.tools.produce import Produced, produce
from tests.support.worker_harness import fresh_settings

pytestmark = pytest.mark.integration

YEAR = 365.25 * 86400.0
UPLOADS = 40
DATINGS = {"now": 0.0, "future": 10 * YEAR, "past": -10 * YEAR}


@dataclass
class Scenario:
    redis_url: str
    worker: WorkerProcess
    reader: OutputReader
    settings: Settings
    run: str
    codec: AvroCodec
    now: float
    rng: np.random.Generator

    def frames(self, apparent: float, n: int = 2) -> list[dict[str, Any]]:
        return [
            events.inline_frame(
                f"f{j}",
                synthetic_face_jpeg(apparent + float(self.rng.normal(0, 1.0)), seed=int(self.rng.integers(1 << 30))),
            )
            for j in range(n)
        ]

    def user(self, name: str) -> str:
        return f"{self.run}-{name}"

    def event(self, role: str, record: dict[str, Any], true_age: float) -> SyntheticEvent:
        subject = {"signups": SIGNUP, "uploads": UPLOAD, "feedback": FEEDBACK}[role]
        record["event_id"] = str(uuid.uuid4())
        uid = str(record["user_id"])
        return SyntheticEvent(role, uid.encode(), self.codec.encode(subject, record), uid, true_age, None)

    def send(self, evs: list[SyntheticEvent], timeout: float = 240) -> dict[str, dict[str, Any]]:
        """Produce, wait until each is decided; the decision per idempotency key, in produce order."""
        produced: list[Produced] = produce(self.settings, evs)
        keys = [p.idempotency_key for p in produced]
        outputs = self.reader.poll_until(keys, timeout=timeout)
        missing = [k for k in keys if k not in outputs.decisions]
        assert not missing, f"{len(missing)} events not decided; worker log:\n{self.worker.tail()}"
        return {k: outputs.decisions[k][0] for k in keys}


@pytest.fixture(scope="module")
def scenario(
    kafka_bootstrap: str, redis_url: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    run = uuid.uuid4().hex[:8]
    settings = fresh_settings(kafka_bootstrap, "h")
    log = tmp_path_factory.mktemp("honest") / "worker.log"
    worker = WorkerProcess(
        worker_env(settings, model=tiny_model, redis_url=redis_url, redis_prefix=f"h{run}"), log
    ).start()
    assert worker.env["AGEGATE_REDIS_PREFIX"] == f"h{run}"
    reader = OutputReader(settings)
    try:
        worker.wait_ready()
        yield Scenario(redis_url, worker, reader, settings, run, AvroCodec(), time.time(), np.random.default_rng(11))
    finally:
        worker.stop()
        reader.close()


def _minor_and_adult(
    s: Scenario, surface: str, *, minor_age: float, looks: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A minor whose photos look `looks` uploads UPLOADS times to `surface` under the DEFAULT
    jurisdiction, and a 35-year-old who looks it 8 times, interleaved: their decisions, in order."""
    minor, adult = s.user(f"{surface}-looks{looks:g}"), s.user(f"{surface}-adult35")
    evs = []
    for k in range(UPLOADS):
        at = s.now + k
        minor_upload = events.upload(minor, at=at, surface=surface, jurisdiction="DEFAULT", frames=s.frames(looks))
        evs.append(s.event("uploads", minor_upload, minor_age))
        if k < 8:
            adult_upload = events.upload(adult, at=at, surface=surface, jurisdiction="DEFAULT", frames=s.frames(35.0))
            evs.append(s.event("uploads", adult_upload, 35.0))
    decisions = list(s.send(evs).values())
    minor_d = [d for d in decisions if d["user_id"] == minor]
    assert len(minor_d) == UPLOADS
    return minor_d, [d for d in decisions if d["user_id"] == adult]


def test_one_face_is_one_person_a_minor_who_looks_older_is_never_allowed(scenario: Scenario) -> None:
    minor_d, adult_d = _minor_and_adult(scenario, "adult_content", minor_age=16.0, looks=21.0)
    assert [d["action"] for d in minor_d if d["action"] == "ALLOW"] == []
    # The belief's spread stops shrinking at the floor instead of going to ~0.5 years.
    last = minor_d[-1]["evidence"]
    assert last["observations"] == UPLOADS  # an event's two frames are one observation
    assert last["age_std"] >= 1.0, last
    assert minor_d[0]["evidence"]["age_std"] > last["age_std"]  # more uploads still help, down to the floor
    assert adult_d[-1]["action"] == "ALLOW", [(d["action"], d["evidence"]) for d in adult_d]


def test_a_minor_who_looks_older_is_never_allowed_to_message_unknown_adults(scenario: Scenario) -> None:
    # The hard case of the 16 surfaces: a 15-year-old whose photos look 19, within the look-older
    # spread of real people. The packaged policy before default-2026.1 (P(age >= 17) >= 0.90) let
    # about 5% of such under-16s through on the hard-case benchmark (docs/evaluation.md).
    minor_d, adult_d = _minor_and_adult(scenario, "messaging_unknown_adults", minor_age=15.0, looks=19.0)
    assert [d["evidence"] for d in minor_d if d["action"] == "ALLOW"] == []
    assert adult_d[-1]["action"] == "ALLOW", [(d["action"], d["evidence"]) for d in adult_d]


def _dated(s: Scenario, name: str, dating: str) -> str:
    return s.user(f"{name}-{dating}")


def test_the_producers_clock_never_buys_a_more_permissive_action(scenario: Scenario) -> None:
    s = scenario
    # History, dated now, identical for the three users of each kind.
    history = []
    for dating in DATINGS:
        history.append(
            s.event(
                "feedback",
                events.feedback(_dated(s, "verified", dating), at=s.now, verified_age=10.0, jurisdiction="DEFAULT"),
                10.0,
            )
        )
        for k in range(3):
            history.append(
                s.event(
                    "uploads",
                    events.upload(
                        _dated(s, "estimated", dating),
                        at=s.now + k,
                        surface="adult_content",
                        jurisdiction="DEFAULT",
                        frames=s.frames(12.0),
                    ),
                    12.0,
                )
            )
            history.append(
                s.event(
                    "uploads",
                    events.upload(
                        _dated(s, "declared", dating),
                        at=s.now + k,
                        surface="profile_photo",
                        jurisdiction="DEFAULT",
                        frames=s.frames(15.0),
                    ),
                    15.0,
                )
            )
    s.send(history)

    # The same final event for each, dated now, ten years ahead, ten years back.
    birth_date = (dt.datetime.fromtimestamp(s.now, dt.UTC) - dt.timedelta(days=int(10 * 365.25))).date()
    final: dict[tuple[str, str], SyntheticEvent] = {}
    for dating, shift in DATINGS.items():
        at = s.now + shift
        final[("verified", dating)] = s.event(
            "uploads",
            events.upload(
                _dated(s, "verified", dating),
                at=at,
                surface="adult_content",
                jurisdiction="DEFAULT",
                frames=s.frames(10.0),
            ),
            10.0,
        )
        final[("estimated", dating)] = s.event(
            "uploads",
            events.upload(
                _dated(s, "estimated", dating),
                at=at,
                surface="adult_content",
                jurisdiction="DEFAULT",
                frames=s.frames(12.0),
            ),
            12.0,
        )
        final[("declared", dating)] = s.event(
            "signups",
            events.signup(_dated(s, "declared", dating), at=at, jurisdiction="DEFAULT", declared_age=30),
            15.0,
        )
        signup = events.signup(_dated(s, "birth-date", dating), at=at, jurisdiction="DEFAULT")
        signup["declared_birth_date"] = birth_date
        final[("birth-date", dating)] = s.event("signups", signup, 10.0)
    decided = s.send(list(final.values()))
    action = {kd: Action(d["action"]) for kd, d in zip(final, decided.values(), strict=True)}
    record = dict(zip(final, decided.values(), strict=True))

    for kind in ("verified", "estimated", "declared", "birth-date"):
        now_action = action[(kind, "now")]
        for dating in ("future", "past"):
            assert STRICTNESS[action[(kind, dating)]] >= STRICTNESS[now_action], (kind, dating, action)
    # The cases that were ALLOWed before the time rule, named.
    assert action[("verified", "future")] is Action.BLOCK
    assert action[("estimated", "future")] is not Action.ALLOW
    assert action[("declared", "future")] is not Action.ALLOW
    assert action[("birth-date", "future")] is Action.BLOCK  # ten years old now, whatever the event's date
    # The decision records both times: the event's claimed time, and when it was judged (processing time).
    future = record[("verified", "future")]
    assert future["event_time"].timestamp() == pytest.approx(s.now + DATINGS["future"], abs=1)
    assert abs(future["decided_at"].timestamp() - time.time()) < 600
    assert "event_time_in_future" in future["reason_codes"]


def test_a_belief_that_vanished_from_redis_is_counted_and_logged(scenario: Scenario) -> None:
    """Not silently judged as a new user: the loss is a metric (alerted on) and a log line."""
    import redis

    s = scenario
    user = s.user("vanishes")
    s.send(
        [
            s.event(
                "uploads",
                events.upload(user, at=s.now, surface="profile_photo", jurisdiction="DEFAULT", frames=s.frames(30.0)),
                30.0,
            )
        ]
    )
    before = s.worker.metric("agegate_beliefs_lost_total")
    client = redis.Redis.from_url(s.redis_url)
    prefix = s.worker.env["AGEGATE_REDIS_PREFIX"]
    assert client.delete(user_key(prefix, user, "b"), user_key(prefix, user, "e")) == 2  # what FLUSHALL does to it
    client.close()
    (after_loss,) = s.send(
        [
            s.event(
                "uploads",
                events.upload(
                    user, at=s.now + 1, surface="profile_photo", jurisdiction="DEFAULT", frames=s.frames(30.0)
                ),
                30.0,
            )
        ]
    ).values()
    assert after_loss["evidence"]["observations"] == 1  # judged as new, so safe: no ALLOW on one event
    assert after_loss["action"] != "ALLOW"
    assert s.worker.metric("agegate_beliefs_lost_total") == before + 1
    assert "beliefs this worker stored are gone" in s.worker.tail(200)
