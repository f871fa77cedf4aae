"""One turn of the improvement loop end to end, on the real broker and Redis with a real worker:

consenting and non-consenting synthetic users send frames -> the worker decides and retains only
the consenting users' frames -> verified ages arrive -> one user is erased -> `datasets
from-feedback` builds the dataset -> a tiny model is fine-tuned from production (and a worse one
trained) -> a worker shadows the fine-tuned one -> promotion is refused for the worse candidate and
accepted for the better one -> rollback restores production. Counts at every step are printed
(`pytest -s`) and asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from model import train as train_mod
from model.data.manifest import load_manifest
from model.evaluation.datasets import build_benchmark
from stream.adapters.belief_store import BeliefStore
from stream.adapters.codec import AvroCodec
from stream.adapters.registry import FEEDBACK, UPLOAD, LocalRegistry
from stream.adapters.topic_reader import read_to_end
from stream.adapters.topics import topic_name
from stream.config import Settings
from stream.core.retention import key_user
from stream.pipeline.assemble import ensure_shadow_topic
from stream.tools import events
from stream.tools.erasure import erase
from stream.tools.feedback_dataset import build
from stream.tools.loadgen import SyntheticEvent
from stream.tools.model_pointer import Pointer
from stream.tools.model_registry import kafka_shadow_source, promote, rollback
from stream.tools.produce import Produced, produce
from stream.tools.shadow_window import ShadowBounds
from tests.integration.replay_support import at, face
from tests.support.worker_harness import OutputReader, WorkerProcess, fresh_settings, worker_env

pytestmark = pytest.mark.integration

CONSENTING, NOT_CONSENTING, VERIFIED, SHADOW_USERS = 300, 12, 284, 40


def _ages(n: int, seed: int) -> list[float]:
    import numpy as np

    return [float(a) for a in np.random.default_rng(seed).uniform(10, 40, n)]  # many near 13/16/18


def _upload(codec: AvroCodec, user: str, age: float, i: int, *, consent: bool, seed: int) -> SyntheticEvent:
    frames = [events.inline_frame(f"f{k}", face(age, seed=seed * 10 + k)) for k in range(2)]
    record = events.upload(user, at=at(i), surface="profile_photo", frames=frames, consent=consent)
    return SyntheticEvent("uploads", user.encode(), codec.encode(UPLOAD, record), user, age, None)


def _verified(codec: AvroCodec, user: str, age: float, i: int) -> SyntheticEvent:
    record = events.feedback(user, at=at(i), verified_age=age)
    return SyntheticEvent("feedback", user.encode(), codec.encode(FEEDBACK, record), user, age, None)


def _run_worker(settings: Settings, env: dict[str, str], log: Path, stream: list[SyntheticEvent]) -> list[Produced]:
    worker = WorkerProcess(env, log).start()
    reader = OutputReader(settings)
    try:
        worker.wait_ready()
        sent = produce(settings, stream)
        outputs = reader.poll_until({p.idempotency_key for p in sent}, timeout=300)
        assert {p.idempotency_key for p in sent} <= set(outputs.decisions), worker.tail()
    finally:
        worker.stop()
        reader.close()
    return sent


def _retained_by_user(settings: Settings) -> dict[str, int]:
    latest: dict[bytes, bool] = {}
    for m in read_to_end(settings, topic_name("retained_frames", settings), group=f"count-{uuid.uuid4().hex}"):
        if m.key() is not None:
            latest[m.key()] = m.value() is not None  # type: ignore[index]
    out: dict[str, int] = {}
    for key, live in latest.items():
        user = key_user(key)
        if live and user is not None:
            out[user] = out.get(user, 0) + 1
    return out


async def _has_belief(settings: Settings, redis_url: str, prefix: str, user: str) -> bool:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = BeliefStore(client, prefix=prefix, half_life_s=365 * 86400.0, ttl_s=400 * 86400.0)
        return (await store.get_many([user], now=at(0)))[user] is not None
    finally:
        await client.aclose()


def _train(*argv: str) -> Path:
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    args = parser.parse_args([*argv, "--threads", "1", "--workers", "1", "--batch-size", "32"])
    assert train_mod.run(args) == 0
    return Path(args.out) / "best.safetensors"


def test_one_turn_of_the_improvement_loop(
    kafka_bootstrap: str, redis_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    counts: dict[str, Any] = {}
    base = fresh_settings(kafka_bootstrap, "loop")
    prefix = f"loop{uuid.uuid4().hex[:6]}"
    settings = dataclasses.replace(base, redis_url=redis_url, redis_key_prefix=prefix)
    codec = AvroCodec(LocalRegistry())
    # Fixed ids (the topics and the Redis prefix are this test's alone): the subject hashes, hence the
    # splits, the fine-tuned model and the gate's verdicts are the same on every run.
    consenting = [f"c{i}" for i in range(CONSENTING)]
    others = [f"n{i}" for i in range(NOT_CONSENTING)]
    ages = dict(zip(consenting + others, _ages(CONSENTING + NOT_CONSENTING, 7), strict=True))

    # 1. Traffic: two upload events of two frames per user; only consenting users' frames are kept.
    stream = [
        _upload(codec, u, ages[u], 2 * i + e, consent=u in consenting, seed=1000 * i + e)
        for i, u in enumerate(consenting + others)
        for e in range(2)
    ]
    verified_users = consenting[: VERIFIED - 4] + others[:4]
    stream += [_verified(codec, u, ages[u], 500 + i) for i, u in enumerate(verified_users)]
    env = worker_env(settings, model=tiny_model, redis_url=redis_url, redis_prefix=prefix)
    sent = _run_worker(settings, env, tmp_path / "worker-1.log", stream)
    retained = _retained_by_user(settings)
    counts["1_traffic"] = {
        "events": len(sent),
        "consenting_users": CONSENTING,
        "other_users": NOT_CONSENTING,
        "verified_users": len(verified_users),
        "retained_frames": sum(retained.values()),
        "retained_users": len(retained),
    }
    assert set(retained) == set(consenting)  # without consent nothing is kept
    assert sum(retained.values()) == CONSENTING * 4

    # 2. Erasure of one consenting, verified user: the belief at once, the frames by tombstones.
    erased = consenting[0]
    assert asyncio.run(_has_belief(settings, redis_url, prefix, erased))
    result = erase(settings, [erased])
    assert result.tombstones == 4
    assert not asyncio.run(_has_belief(settings, redis_url, prefix, erased))
    counts["2_erasure"] = result.to_dict()

    # 3. Dataset from feedback.
    feedback = build(settings, tmp_path / "feedback", val=0.25, test=0.4)
    report = feedback["report"]
    counts["3_dataset"] = {
        k: report[k]
        for k in (
            "frames_read",
            "frames_used",
            "users_with_frames",
            "users_verified",
            "users_used",
            "verified_without_frames",
        )
    }
    counts["3_dataset"] |= {
        "skipped_frames": report["skipped_frames"],
        "erased": report["reader"]["retained_erased"],
        "splits": feedback["splits"],
        "content_hash": feedback["content_hash"][:19],
    }
    assert report["frames_used"] == (VERIFIED - 4 - 1) * 4  # consenting, verified, not erased
    assert report["skipped_frames"] == {"no_verification": (CONSENTING - VERIFIED + 4) * 4}
    assert report["reader"]["retained_erased"] == 4
    assert report["verified_without_frames"] == 4 + 1  # 4 never consented, 1 erased
    manifest = tmp_path / "feedback" / "manifest.csv"
    assert load_manifest(manifest).split("test")

    # 4. Fine-tune production on the feedback data (mixed with production's base data); a worse one too.
    base_data = tiny_model.parent.parent / "data" / "manifest.csv"
    better = _train(
        "--data",
        str(manifest),
        "--out",
        str(tmp_path / "better"),
        "--init-from",
        str(tiny_model),
        "--mix",
        str(base_data),
        "--mix-max",
        "3000",
        "--epochs",
        "3",
        "--lr",
        "2e-4",
        "--warmup-steps",
        "5",
        "--version",
        "loop-ft1",
    )
    worse = _train(
        "--data",
        str(manifest),
        "--out",
        str(tmp_path / "worse"),
        "--epochs",
        "1",
        "--lr",
        "0",
        "--version",
        "loop-worse",
    )
    bench = tmp_path / "bench"
    build_benchmark(bench, images=400, seed=4242)

    # 5. Shadow: a worker scores new traffic with production and shadows the fine-tuned model.
    ensure_shadow_topic(settings, partitions=3)
    shadow_users = [f"s{i}" for i in range(SHADOW_USERS)]
    shadow_ages = dict(zip(shadow_users, _ages(SHADOW_USERS, 11), strict=True))
    stream2 = [
        _upload(codec, u, shadow_ages[u], 700 + i, consent=False, seed=50_000 + i) for i, u in enumerate(shadow_users)
    ]
    env2 = worker_env(
        settings, model=tiny_model, redis_url=redis_url, redis_prefix=prefix, AGEGATE_SHADOW_MODEL=str(better)
    )
    _run_worker(settings, env2, tmp_path / "worker-2.log", stream2)
    bounds = ShadowBounds(
        window_s=3600.0,
        min_events=SHADOW_USERS,
        max_action_change_rate=0.5,
        max_new_allow_rate=0.25,
        max_mean_abs_diff_years=10.0,
    )
    shadow_source = kafka_shadow_source(settings)  # what `agegate model promote` reads

    # 6. Promotion: refused for the worse candidate, accepted for the better one; rollback restores.
    pointer_path = tmp_path / "model.env"
    pointer_path.write_text(f"AGEGATE_MODEL={tiny_model}\n")
    pointer = Pointer(pointer_path)
    printed: list[str] = []
    ok_worse, refused = promote(
        pointer,
        str(worse),
        benchmark=str(bench / "manifest.csv"),
        feedback=str(manifest),
        reason="loop test: worse",
        who="ci",
        shadow_source=shadow_source,
        bounds=bounds,
        out=tmp_path / "promote-worse",
        bootstrap=300,
        threads=1,
        echo=printed.append,
    )
    assert not ok_worse
    assert pointer.read() == str(tiny_model)
    ok_better, accepted = promote(
        pointer,
        str(better),
        benchmark=str(bench / "manifest.csv"),
        feedback=str(manifest),
        reason="loop test: fine-tuned on feedback",
        who="ci",
        shadow_source=shadow_source,
        bounds=bounds,
        out=tmp_path / "promote-better",
        bootstrap=300,
        threads=1,
        echo=printed.append,
    )
    assert ok_better, "\n".join(printed)
    assert pointer.read() == str(better)
    counts["6_promotion"] = {
        "worse": {"action": refused["action"], "refused_because": refused["refused_because"]},
        "better": {
            "action": accepted["action"],
            "shadow": {
                k: accepted["evidence"]["shadow"][k]
                for k in ("events", "action_changes", "new_allows", "action_change_rate", "mean_abs_diff_years")
            },
        },
    }
    back = rollback(pointer, reason="loop test: restore", who="ci")
    assert pointer.read() == str(tiny_model)
    counts["7_rollback"] = {"to": back["model_version"], "history": [e["action"] for e in pointer.history()]}
    print("\nLOOP COUNTS " + json.dumps(counts, indent=1, sort_keys=True))
    print("\n".join(printed))
