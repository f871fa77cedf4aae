"""Replay against the real broker and Redis: diff with a stricter policy, determinism, crash + resume."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.engine import InferenceEngine
from stream.adapters.topics import TopicAdmin
from stream.config import Settings, load_settings
from stream.runners.replay import ReplayConfig, parse_bound, replay
from stream.tools import events
from stream.tools.localrun import OutputReader, WorkerProcess, worker_env
from tests.integration.replay_support import at, face, produce, replay_command, snapshot, tiny_checkpoint

pytestmark = pytest.mark.integration

STRICTER = """
version = "stricter-1"
default_jurisdiction = "DEFAULT"
[settings]
half_life_days = 365.0
min_observations = 2
hysteresis_margin = 0.1
[jurisdictions.DEFAULT.surfaces.account_creation]
min_age = 18
buffer_years = 1.0
required_confidence = 0.90
under_age_action = "BLOCK"
[jurisdictions.DEFAULT.surfaces.profile_photo]
min_age = 13
buffer_years = 1.0
required_confidence = 0.90
under_age_action = "RESTRICT"
[jurisdictions.EU.surfaces.account_creation]
min_age = 16
buffer_years = 1.0
required_confidence = 0.90
under_age_action = "BLOCK"
"""


def eid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "agegate-test:" + name))


def history() -> list[tuple[str, dict[str, Any]]]:
    """Events whose decisions under the default and the stricter policy are known in advance:
    - s1..s3: declared 15 (US -> DEFAULT): no belief -> REQUIRE_VERIFICATION; stricter (18): BLOCK;
    - s4, s5: declared 25: REQUIRE_VERIFICATION under both;
    - v1, v2: verified 16: ALLOW; stricter: BLOCK;
    - e1: EU, declared 15: BLOCK under both (EU is 16 in both);
    - m1..m3: two profile-photo uploads each with frames: the model is exercised, the rule is
      unchanged, and later uploads depend on earlier ones (belief), which resume must respect."""
    evs: list[tuple[str, dict[str, Any]]] = []
    for n, age in ((1, 15), (2, 15), (3, 15), (4, 25), (5, 25)):
        evs.append(("signups", events.signup(f"s{n}", at=at(len(evs)), declared_age=age, event_id=eid(f"s{n}"))))
    for n in (1, 2):
        evs.append(("feedback", events.feedback(f"v{n}", at=at(len(evs)), verified_age=16, event_id=eid(f"v{n}"))))
    evs.append(
        ("signups", events.signup("e1", at=at(len(evs)), jurisdiction="EU", declared_age=15, event_id=eid("e1")))
    )
    i = len(evs)
    for rnd in range(2):
        for n in (1, 2, 3):
            frames = [events.inline_frame(f"f{k}", face(20 + 5 * n, seed=100 * n + 10 * rnd + k)) for k in range(2)]
            evs.append(
                (
                    "uploads",
                    events.upload(
                        f"m{n}",
                        at=at(i),
                        surface="profile_photo",
                        frames=frames,
                        event_id=eid(f"ev-m{n}-{rnd}"),
                        content_id=f"c{n}{rnd}",
                    ),
                )
            )
            i += 1
    return evs


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:

    uid = uuid.uuid4().hex[:10]
    settings = load_settings(
        environ={},
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=f"r{uid}.",
        consumer_group=f"g{uid}",
        redis_key_prefix=f"prod{uid}",
        inference_device="cpu",
        inference_threads=1,
        batch_max_frames=8,
    )
    TopicAdmin(settings).create()
    tmp = tmp_path_factory.mktemp("replay")
    ckpt = tiny_checkpoint(tmp, seed=0)
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu", threads=1)
    produce(settings, history())
    # The recorded decisions come from the real worker (`agegate worker`), run over the history.
    worker = WorkerProcess(
        worker_env(
            settings,
            model=ckpt,
            redis_url=redis_url,
            redis_prefix=settings.redis_key_prefix,
            AGEGATE_BATCH_MAX_FRAMES="8",
        ),
        tmp / "worker.log",
    ).start()
    reader = OutputReader(settings)
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 120
        outputs = reader.outputs
        while len(outputs.decisions) < len(history()) and time.monotonic() < deadline:
            outputs = reader.poll_until(["?"], timeout=0.5)  # reads what arrived; "?" is never a key
    finally:
        worker.stop()
        reader.close()
    assert len(outputs.decisions) == len(history())
    assert outputs.dead_letters == {}
    stricter = tmp / "stricter.toml"
    stricter.write_text(STRICTER)
    yield {"settings": settings, "engine": engine, "ckpt": ckpt, "tmp": tmp, "stricter": stricter}
    engine.close()


def _cfg(env: dict[str, Any], out: Path, **kw: Any) -> ReplayConfig:
    return ReplayConfig(
        settings=env["settings"],
        frm=parse_bound("earliest"),
        to=parse_bound("latest"),
        out=f"file:{out}",
        state_path=out.with_suffix(".state.json"),
        model=str(env["ckpt"]),
        progress=False,
        checkpoint_every=4,
        **kw,
    )


async def test_stricter_policy_diff_shows_exactly_the_expected_changes(env: dict[str, Any], redis_url: str) -> None:
    settings: Settings = env["settings"]
    before = await snapshot(redis_url, settings.redis_key_prefix)
    assert before, "the live run must have written production beliefs"
    out = env["tmp"] / "stricter.jsonl"
    summary = await replay(_cfg(env, out, policy=str(env["stricter"]), diff_against="decisions"), engine=env["engine"])
    assert summary.events == len(history())
    assert summary.dead_letters == 0
    report = summary.diff
    assert report is not None
    assert report["matched"] == len(history())
    assert report["only_replayed"] == report["only_recorded"] == 0
    changes = {(o, n): c for o, row in report["matrix"].items() for n, c in row.items() if o != n}
    assert changes == {("REQUIRE_VERIFICATION", "BLOCK"): 3, ("ALLOW", "BLOCK"): 2}
    assert report["by_jurisdiction"]["EU"] == {"BLOCK": {"BLOCK": 1}}
    assert report["by_surface"]["account_creation"]["ALLOW"] == {"BLOCK": 2}
    photo = report["by_surface"]["profile_photo"]
    assert sum(n for row in photo.values() for n in row.values()) == 6
    assert all(set(row) == {old} for old, row in photo.items()), "profile_photo's rule did not change"
    users = {e["user_id"] for refs in report["examples"].values() for e in refs}
    assert users == {"s1", "s2", "s3", "v1", "v2"}
    written = json.loads(Path(str(out) + ".diff.json").read_bytes())  # noqa: ASYNC240 - a small test file
    assert written["changed"] == 5
    assert b"REQUIRE_VERIFICATION->BLOCK" in Path(str(out) + ".diff.txt").read_bytes()  # noqa: ASYNC240
    # Production state untouched, and the replay's own namespace is gone.
    assert await snapshot(redis_url, settings.redis_key_prefix) == before
    assert not await snapshot(redis_url, f"{settings.redis_key_prefix}-replay-*")


async def test_same_window_twice_is_byte_identical(env: dict[str, Any]) -> None:
    a, b = env["tmp"] / "a.jsonl", env["tmp"] / "b.jsonl"
    await replay(_cfg(env, a), engine=env["engine"])
    await replay(_cfg(env, b), engine=env["engine"])
    assert a.read_bytes() == b.read_bytes()
    lines = [json.loads(x) for x in a.read_text().splitlines()]
    assert len(lines) == len(history())
    scored = [x["decision"] for x in lines if x["decision"]["evidence"]["frames_scored"]]
    assert len(scored) == 6
    assert all(d["model_version"] == "age_regressor@s0" for d in scored)
    # Second upload of each user saw the first: 2 observations (an event's 2 frames are one).
    assert sorted(d["evidence"]["observations"] for d in scored) == [1, 1, 1, 2, 2, 2]


def test_killed_replay_resumes_to_the_uninterrupted_output(env: dict[str, Any], redis_url: str) -> None:
    settings: Settings = env["settings"]
    whole = env["tmp"] / "whole.jsonl"
    import asyncio

    asyncio.run(replay(_cfg(env, whole), engine=env["engine"]))
    out = env["tmp"] / "resumed.jsonl"
    cmd, child_env = replay_command(settings, redis_url, env["ckpt"], out, "--checkpoint-every", "7")
    # Dies after 13 events: a checkpoint after 7, then both uploads of m1 and m2 fused into Redis and
    # written to the file; without the rollback, m1's first upload would be re-decided on 4 observations.
    crashed = subprocess.run([*cmd, "--fail-after", "13"], env=child_env, capture_output=True, timeout=300)
    assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
    state = json.loads(Path(str(out) + ".state.json").read_text())
    assert not state["done"]
    assert state["events"] == 7
    assert out.stat().st_size > state["out_bytes"], "the crash left lines past the checkpoint"
    resumed = subprocess.run(cmd, env=child_env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert json.loads(resumed.stdout.decode().strip().splitlines()[-1])["events"] == len(history())
    assert out.read_bytes() == whole.read_bytes()
