"""The real worker with user ids of any content, and one user whose update Redis refuses.

Every event is produced with the same Kafka key, so all of them share one partition: the odd ids, a
user with a foreign value in its belief key (Redis answers its script with WRONGTYPE), then later
events. Before: an empty id or one starting with `}` broke the cluster's slot rule and any script
error was fatal (exit 3, crash loop, the partition stuck). Now: every odd id is decided, the poisoned
user's upload and verified age are `belief_update_failed` dead letters, the worker keeps running,
and the events after them are decided. Runs against the plain Redis and the Redis Cluster (AGEGATE_REDIS_CLUSTER=true).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from model.data.synthetic import encode_jpeg, render_face, sample_attributes
from stream.adapters.belief_store import user_key
from stream.adapters.codec import AvroCodec
from stream.adapters.topics import TopicAdmin
from stream.config import Settings
from stream.core.subjects import FEEDBACK, UPLOAD
from stream.tools import events
from stream.tools.loadgen import SyntheticEvent
from stream.tools.produce import Produced, produce
from tests.support.worker_harness import OutputReader, WorkerProcess, beliefs, worker_env

pytestmark = pytest.mark.integration

START = 1_790_000_000.0
# Avro strings are UTF-8, so lone surrogates cannot travel in an event (the store tests cover them).
ODD_IDS = [
    "",
    "}",
    "{",
    "}{",
    "{}",
    "{abc}",
    "x" * 10_240,
    "a\x00b",
    "line\nbreak",
    " ",
    "\U0001f476\U0001f3fd emoji",
    "caf\u00e9",
    "cafe\u0301",
]
POISONED = "poisoned-user"
VERIFIED_ODD = "}verified{"


def feedbacks(user_ids: list[str], t0: float) -> list[SyntheticEvent]:
    codec = AvroCodec()
    return [
        SyntheticEvent(
            "feedback",
            b"one-partition",
            codec.encode(FEEDBACK, events.feedback(uid, at=t0, verified_age=25.0, jurisdiction="GB")),
            uid,
            25.0,
            None,
        )
        for uid in user_ids
    ]


def uploads(user_ids: list[str], rng: np.random.Generator, t0: float) -> list[SyntheticEvent]:
    codec = AvroCodec()
    out = []
    for k, uid in enumerate(user_ids):
        age = 30.0
        frame = encode_jpeg(render_face(age, sample_attributes(rng), rng, size=64), rng)
        record = events.upload(
            uid, at=t0 + k, surface="adult_content", jurisdiction="GB", frames=[events.inline_frame("f0", frame)]
        )
        out.append(SyntheticEvent("uploads", b"one-partition", codec.encode(UPLOAD, record), uid, age, None))
    return out


@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_odd_ids_are_decided_and_a_refused_update_is_one_dead_letter(
    backend: str, request: pytest.FixtureRequest, kafka_settings: Settings, tiny_model: Path, tmp_path: Path
) -> None:
    settings = kafka_settings
    TopicAdmin(settings).create()
    url = request.getfixturevalue("redis_url" if backend == "redis" else "redis_cluster_url")
    prefix = f"ids{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(url)  # one node: every slot is served by it, a plain client reaches all
    client.set(user_key(prefix, POISONED, "b"), "not a hash")
    extra = {"AGEGATE_REDIS_CLUSTER": "true"} if backend == "cluster" else {}
    worker = WorkerProcess(
        worker_env(settings, model=tiny_model, redis_url=url, redis_prefix=prefix, **extra), tmp_path / "worker.log"
    ).start()
    reader = OutputReader(settings)
    rng = np.random.default_rng(3)
    try:
        worker.wait_ready()
        first: list[Produced] = produce(settings, uploads([*ODD_IDS, POISONED], rng, START))
        assert len({p.partition for p in first}) == 1
        # Verified ages take another path (a prior read batched with other users, then the script).
        verified = produce(settings, feedbacks([VERIFIED_ODD, POISONED], START + 60))
        outputs = reader.poll_until({p.idempotency_key for p in first + verified}, timeout=120)
        by_user = {p.event.user_id: p.idempotency_key for p in first}
        assert outputs.accounted() >= {p.idempotency_key for p in first + verified}, worker.tail()
        for uid in ODD_IDS:
            (decision,) = outputs.decisions[by_user[uid]]
            assert decision["user_id"] == uid
        (verified_decision,) = outputs.decisions[verified[0].idempotency_key]
        assert verified_decision["user_id"] == VERIFIED_ODD
        for poisoned_key in (by_user[POISONED], verified[1].idempotency_key):
            (dead,) = outputs.dead_letters[poisoned_key]
            assert dead["reason"] == "belief_update_failed"
            assert dead["error_class"] == "BeliefUpdateFailed"
            assert POISONED not in dead["detail"]
            assert poisoned_key not in outputs.decisions
        assert worker.proc is not None
        assert worker.proc.poll() is None, worker.tail()  # not fatal: the worker keeps consuming
        # Later events of the same partition, including the odd ids again: all decided.
        later = produce(settings, uploads([*ODD_IDS, "later-user"], rng, START + 3600))
        outputs = reader.poll_until({p.idempotency_key for p in later}, timeout=120)
        assert {p.idempotency_key for p in later} <= set(outputs.decisions), worker.tail()
        assert worker.proc.poll() is None
        stored = beliefs(url, prefix, ODD_IDS)
        assert {uid: stored[uid].get("n") for uid in ODD_IDS} == {uid: "2" for uid in ODD_IDS}
    finally:
        worker.stop()
        reader.close()
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        for key in keys:
            client.delete(key)
        client.close()
