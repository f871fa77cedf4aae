"""A rollout's tools against the real broker, Redis and worker (issue 16).

- Determinism: one window replayed with several checkpoint intervals and rates, and killed (kill -9
  semantics: `--fail-after` exits 137 with writes past its checkpoint) then resumed with other
  intervals and rates, gives the same bytes; a resume whose output-changing settings differ is refused.
- The diff separates causes: the recorded decisions come from a real worker that saw, for two
  events, inputs the replay does not (a verification that happened later, frames of a later upload).
  Against the recorded decisions those changes are reported as `inputs`; against a baseline replay
  of the same window only the candidate policy's changes remain.
"""

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
from stream.config import load_settings
from stream.runners.replay import ReplayConfig, parse_bound, replay
from stream.tools import events
from stream.tools.localrun import OutputReader, WorkerProcess, worker_env
from tests.integration.replay_support import at, face, produce, replay_command

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
"""


def eid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "agegate-rollout-test:" + name))


def frames(user: str, n: int, seed: int) -> list[dict[str, Any]]:
    return [events.inline_frame(f"{user}-{seed}-{k}", face(25, seed=seed * 10 + k)) for k in range(n)]


def backlog() -> list[tuple[str, dict[str, Any]]]:
    """Produced before the worker starts: s1..s3 declared 15 (REQUIRE_VERIFICATION by default, BLOCK
    under STRICTER's 18), s4 declared 25, and 12 uploads of 6 users with 1 to 3 frames each, so
    micro-batches fill differently with every checkpoint interval and rate."""
    evs: list[tuple[str, dict[str, Any]]] = []
    for n, age in ((1, 15), (2, 15), (3, 15), (4, 25)):
        evs.append(("signups", events.signup(f"s{n}", at=at(len(evs)), declared_age=age, event_id=eid(f"s{n}"))))
    for rnd in range(2):
        for n in range(6):
            evs.append(
                (
                    "uploads",
                    events.upload(
                        f"m{n}",
                        at=at(len(evs)),
                        surface="profile_photo",
                        frames=frames(f"m{n}", 1 + (n + rnd) % 3, 100 * rnd + n),
                        event_id=eid(f"m{n}-{rnd}"),
                        content_id=f"c{n}{rnd}",
                    ),
                )
            )
    return evs


# Produced one at a time while the worker runs, each after the previous one's decision: the worker
# sees them in this order, the replay in event-time order (the `at` index).
LIVE_ORDER: list[tuple[str, dict[str, Any]]] = [
    # w1's verification happened after its upload, but the worker saw it first.
    ("feedback", events.feedback("w1", at=at(41), verified_age=16, event_id=eid("w1-fb"))),
    (
        "uploads",
        events.upload(
            "w1",
            at=at(40),
            surface="profile_photo",
            frames=frames("w1", 2, 900),
            event_id=eid("w1-up"),
            content_id="w1",
        ),
    ),
    # f1's upload came after its signup (with a selfie), but the worker took the uploads topic first:
    # it fused the upload's frames into the signup's decision. (Within one topic a user's events stay
    # in offset order, live and in the replay; across topics only the replay orders by event time.)
    (
        "uploads",
        events.upload(
            "f1",
            at=at(51),
            surface="profile_photo",
            frames=frames("f1", 2, 910),
            event_id=eid("f1-up"),
            content_id="f1",
        ),
    ),
    ("signups", events.signup("f1", at=at(50), declared_age=30, frames=frames("f1", 2, 920), event_id=eid("f1-su"))),
]
EVENTS = len(backlog()) + len(LIVE_ORDER)


@pytest.fixture(scope="module")
def env(
    kafka_bootstrap: str, redis_url: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    # A trained model: an untrained one's activations are too uniform for batch fill to change a bit.
    uid = uuid.uuid4().hex[:10]
    settings = load_settings(
        environ={},
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=f"ro{uid}.",
        consumer_group=f"g{uid}",
        redis_key_prefix=f"prod{uid}",
        inference_device="cpu",
        inference_threads=1,
        batch_max_frames=8,
    )
    TopicAdmin(settings).create()
    tmp = tmp_path_factory.mktemp("rollout")
    ckpt = tiny_model
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu", threads=1)
    produce(settings, backlog())
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

        def decided(n: int) -> int:
            deadline = time.monotonic() + 120
            outputs = reader.outputs
            while len(outputs.decisions) < n and time.monotonic() < deadline:
                outputs = reader.poll_until(["?"], timeout=0.5)  # reads what arrived; "?" is never a key
            return len(outputs.decisions)

        assert decided(len(backlog())) == len(backlog())
        for i, event in enumerate(LIVE_ORDER):
            produce(settings, [event])
            assert decided(len(backlog()) + i + 1) == len(backlog()) + i + 1, worker.tail()
    finally:
        worker.stop()
        reader.close()
    stricter = tmp / "stricter.toml"
    stricter.write_text(STRICTER)
    yield {
        "settings": settings,
        "engine": engine,
        "ckpt": ckpt,
        "tmp": tmp,
        "stricter": stricter,
        "redis_url": redis_url,
    }
    engine.close()


def _cfg(env: dict[str, Any], out: Path, **kw: Any) -> ReplayConfig:
    kw.setdefault("checkpoint_every", 1000)
    return ReplayConfig(
        settings=env["settings"],
        frm=parse_bound("earliest"),
        to=parse_bound("latest"),
        out=f"file:{out}",
        state_path=out.with_suffix(".state.json"),
        model=str(env["ckpt"]),
        progress=False,
        **kw,
    )


def _cli(env: dict[str, Any], out: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[bytes]:
    cmd, child_env = replay_command(env["settings"], env["redis_url"], env["ckpt"], out, *args, **extra_env)
    return subprocess.run(cmd, env=child_env, capture_output=True, timeout=300, check=False)


# --- determinism ----------------------------------------------------------------------------------


async def test_checkpoint_interval_and_rate_do_not_change_a_byte(env: dict[str, Any]) -> None:
    whole = env["tmp"] / "whole.jsonl"
    summary = await replay(_cfg(env, whole), engine=env["engine"])
    assert summary.events == EVENTS
    reference = whole.read_bytes()
    lines = [json.loads(x) for x in reference.splitlines()]
    assert sum(1 for x in lines if x["kind"] == "decision" and x["decision"]["evidence"]["frames_scored"]) == 15
    for name, kw in (
        ("every1", {"checkpoint_every": 1}),
        ("every3-rate", {"checkpoint_every": 3, "rate": 200.0}),
        ("inflight1", {"checkpoint_every": 5, "max_in_flight": 1}),
    ):
        out = env["tmp"] / f"{name}.jsonl"
        await replay(_cfg(env, out, **kw), engine=env["engine"])
        assert out.read_bytes() == reference, f"{name}: the output depends on how batches filled"


def test_killed_and_resumed_with_other_interval_and_rate_is_identical(env: dict[str, Any]) -> None:
    whole = env["tmp"] / "whole-cli.jsonl"
    done = _cli(env, whole)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = env["tmp"] / "killed.jsonl"
    crashed = _cli(env, out, "--checkpoint-every", "5", "--rate", "100", "--fail-after", "12")
    assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
    state = json.loads(Path(str(out) + ".state.json").read_text())
    assert (state["done"], state["events"]) == (False, 10)
    assert out.stat().st_size > state["out_bytes"], "the crash left lines past the checkpoint"
    resumed = _cli(env, out, "--checkpoint-every", "2")
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    summary = json.loads(resumed.stdout.decode().strip().splitlines()[-1])
    assert summary["events"] == EVENTS
    assert summary["events_this_run"] == EVENTS - 10, "rates are over what this run processed"
    assert out.read_bytes() == whole.read_bytes()


def test_a_resume_with_other_output_changing_settings_is_refused(env: dict[str, Any]) -> None:
    out = env["tmp"] / "pinned.jsonl"
    crashed = _cli(env, out, "--checkpoint-every", "5", "--fail-after", "7")
    assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
    pinned = json.loads(Path(str(out) + ".state.json").read_text())["pinned"]
    assert pinned["batch_frames"] == 8
    assert len(pinned["model_sha256"]) == len(pinned["policy_sha256"]) == 64
    for args, extra, what in (
        ((), {"AGEGATE_BATCH_MAX_FRAMES": "16"}, "batch_frames"),
        (("--policy", str(env["stricter"])), {}, "policy"),
        ((), {"AGEGATE_BELIEF_HALF_LIFE_DAYS": "30"}, "belief_half_life_days"),
    ):
        refused = _cli(env, out, *args, **extra)
        assert refused.returncode == 2, refused.stderr.decode()[-2000:]
        assert what in refused.stderr.decode(), refused.stderr.decode()[-2000:]
    # Nothing was touched by the refusals: the original settings still resume to the full window.
    resumed = _cli(env, out)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert json.loads(resumed.stdout.decode().strip().splitlines()[-1])["events"] == EVENTS


# --- the diff's causes ----------------------------------------------------------------------------


async def test_same_model_and_policy_against_recorded_changes_only_by_inputs(env: dict[str, Any]) -> None:
    out = env["tmp"] / "baseline-vs-recorded.jsonl"
    summary = await replay(_cfg(env, out, diff_against="decisions"), engine=env["engine"])
    report = summary.diff
    assert report is not None
    assert report["matched"] == EVENTS
    inputs = report["inputs_differ"]
    # Live, w1's upload saw the later verification (and the verification one observation fewer); f1's
    # signup fused the later upload's frames (and the upload one observation fewer).
    assert inputs["matched"] == len(LIVE_ORDER)
    assert (inputs["verified_only_before"], inputs["verified_only_replayed"]) == (1, 0)
    assert (inputs["more_observations_before"], inputs["fewer_observations_before"]) == (1, 2)
    assert report["changed"] == inputs["changed"] >= 1
    assert report["causes"] == {"model_or_policy": 0, "inputs": report["changed"], "unexplained": 0}
    changed_users = {e["user_id"] for refs in report["examples"].values() for e in refs}
    assert changed_users <= {"w1", "f1"}
    assert "w1" in changed_users, "a verified ALLOW live, never ALLOW on one observation in the replay"


async def test_candidate_against_recorded_reports_input_changes_apart(env: dict[str, Any]) -> None:
    out = env["tmp"] / "stricter-vs-recorded.jsonl"
    summary = await replay(_cfg(env, out, policy=str(env["stricter"]), diff_against="decisions"), engine=env["engine"])
    report = summary.diff
    assert report is not None
    # s1..s3 (declared 15) are blocked at 18: the policy. w1's verification (16) is blocked too, but the
    # worker saw it with other evidence, so it is reported apart, with w1's upload.
    assert report["causes"]["model_or_policy"] == 3
    assert report["matrix_by_cause"]["model_or_policy"] == {"REQUIRE_VERIFICATION": {"BLOCK": 3}}
    assert report["causes"]["inputs"] >= 2
    assert report["changed"] == 3 + report["causes"]["inputs"]
    table = Path(str(out) + ".diff.txt").read_text()  # noqa: ASYNC240 - a small test file
    assert "3 changed by the model or policy" in table
    assert "diff the candidate against a baseline replay" in table


async def test_candidate_against_a_baseline_replay_shows_only_the_policy(env: dict[str, Any]) -> None:
    """The rollout comparison: baseline (production model and policy) and candidate over one window."""
    baseline = env["tmp"] / "baseline.jsonl"
    await replay(_cfg(env, baseline), engine=env["engine"])
    candidate = env["tmp"] / "candidate.jsonl"
    summary = await replay(
        _cfg(env, candidate, policy=str(env["stricter"]), diff_against=f"file:{baseline}"), engine=env["engine"]
    )
    report = summary.diff
    assert report is not None
    assert report["against"] == "baseline"
    assert (report["matched"], report["only_replayed"], report["only_recorded"]) == (EVENTS, 0, 0)
    # s1..s3 (declared 15) and w1's verification (16) are below STRICTER's 18; nothing else changes.
    assert report["causes"] == {"model_or_policy": 4, "inputs": 0, "unexplained": 0}
    assert report["matrix_by_cause"]["model_or_policy"] == {"REQUIRE_VERIFICATION": {"BLOCK": 3}, "ALLOW": {"BLOCK": 1}}
    assert {e["user_id"] for refs in report["examples"].values() for e in refs} == {"s1", "s2", "s3", "w1"}
