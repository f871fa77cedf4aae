"""One user's script error stays that user's: classification of pipeline replies, and routing to the event.

Pure logic with a fake pipeline reply (the real script errors are in tests/integration/test_belief_store.py
and, through the worker, tests/integration/test_worker.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from redis import exceptions as redis_exc

from stream.adapters.belief_store import BeliefStore, BeliefStoreError
from stream.core.belief import Belief, Evidence
from stream.core.belief_updates import ApplyResult, BeliefUpdateFailed, SurfaceKey
from stream.core.policy import Action
from stream.errors import DependencyUnavailable
from stream.pipeline.fuse import BeliefRequest, BeliefStage, Fused, rounds_by_depth

FLOOR = 2.0
NOW = 1_750_000_000.0
# ..., mv, f (the floor), fr (its rms part), fv (earlier versions' part)
OK_REPLY = [b"A", b"1", b"1000.0", b"0.25", str(NOW).encode(), b"1", b"0", b"m", b"2.0", b"2.0", b"0.0"]


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.keys: list[str] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def execute_command(self, *args: Any) -> None:
        assert args[0] == "EVALSHA"
        self.keys.append(args[3])

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        assert raise_on_error is False
        self.client.sent.append(list(self.keys))
        return [self.client.replies[k].pop(0) for k in self.keys]


class FakeRedis:
    """Answers each belief key with the next reply queued for it."""

    def __init__(self, replies: dict[str, list[Any]]) -> None:
        self.replies = replies
        self.sent: list[list[str]] = []
        self.loads = 0

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)

    async def script_load(self, source: str) -> str:
        self.loads += 1
        return "sha"


def make(replies_by_user: dict[str, list[Any]]) -> tuple[BeliefStore, FakeRedis]:
    probe = BeliefStore(None, prefix="p", half_life_s=1.0, ttl_s=1.0)  # type: ignore[arg-type]
    fake = FakeRedis({probe.belief_key(u): r for u, r in replies_by_user.items()})
    return BeliefStore(fake, prefix="p", half_life_s=1.0, ttl_s=1.0), fake  # type: ignore[arg-type]


def batch(*users: str) -> dict[str, list[Evidence]]:
    return {u: [Evidence(f"e-{u}", NOW, 20.0, 2.0)] for u in users}


async def test_a_script_error_is_returned_for_its_user_and_the_others_apply() -> None:
    wrongtype = redis_exc.ResponseError("Error running script: WRONGTYPE Operation against a key")
    store, fake = make({"a": [OK_REPLY], "bad": [wrongtype], "c": [OK_REPLY]})
    result = await store.apply(batch("a", "bad", "c"), now=NOW, model_version="m", floor=FLOOR)
    assert set(result.errors) == {"bad"}
    assert result.errors["bad"].reason == "belief_update_failed"
    assert "WRONGTYPE" in result.errors["bad"].detail
    assert result.errors["bad"].__cause__ is wrongtype
    assert set(result) == {"a", "c"}
    assert result.applied["a"] == ("e-a",)
    assert "bad" not in result.applied
    assert len(fake.sent) == 1  # one round trip, nothing resent


async def test_a_verified_age_hitting_a_script_error_raises_the_typed_dead_letter() -> None:
    store, _ = make({"bad": [redis_exc.ResponseError("ERR user_script:1: boom")]})
    with pytest.raises(BeliefUpdateFailed):
        await store.apply_verified("bad", event_id="v", verified_age=20.0, verified_at=NOW, now=NOW)


async def test_noscript_is_reloaded_and_only_those_calls_resent() -> None:
    store, fake = make({"a": [OK_REPLY], "b": [redis_exc.NoScriptError("NOSCRIPT"), OK_REPLY]})
    result = await store.apply(batch("a", "b"), now=NOW, model_version="m", floor=FLOOR)
    assert result.errors == {}
    assert set(result) == {"a", "b"}
    assert fake.loads == 2
    assert [len(keys) for keys in fake.sent] == [2, 1]


@pytest.mark.parametrize(
    "reply",
    [
        redis_exc.ConnectionError("reset"),
        redis_exc.TimeoutError("slow"),
        redis_exc.OutOfMemoryError("OOM"),
        redis_exc.ReadOnlyError("READONLY"),
        redis_exc.ClusterDownError("CLUSTERDOWN"),
        redis_exc.TryAgainError("x"),
        redis_exc.MovedError("3999 127.0.0.1:6381"),
        redis_exc.ResponseError("BUSY Redis is busy running a script"),
    ],
    ids=lambda r: type(r).__name__ + ("-busy" if str(r).startswith("BUSY") else ""),
)
async def test_the_servers_own_trouble_is_an_outage_not_a_dead_letter(reply: Exception) -> None:
    store, _ = make({"a": [OK_REPLY], "b": [reply]})
    with pytest.raises(DependencyUnavailable):
        await store.apply(batch("a", "b"), now=NOW, model_version="m", floor=FLOOR)


async def test_a_missing_permission_is_fatal_not_every_users_dead_letter() -> None:
    store, _ = make({"a": [redis_exc.NoPermissionError("NOPERM no EVALSHA")]})
    with pytest.raises(BeliefStoreError):
        await store.apply(batch("a"), now=NOW, model_version="m", floor=FLOOR)


class ErroringStore:
    """apply() refuses one user, as BeliefStore does after a script error in that user's reply."""

    def __init__(self, bad: str) -> None:
        self.bad = bad

    async def apply(
        self, updates: Mapping[str, Sequence[Evidence]], *, now: float, model_version: str, floor: float
    ) -> ApplyResult:
        result = ApplyResult()
        for user in updates:
            if user == self.bad:
                result.errors[user] = BeliefUpdateFailed("belief script failed: WRONGTYPE")
            else:
                result[user] = Belief(
                    birth_time=0.0,
                    precision=1.0,
                    updated_at=now,
                    observations=1,
                    verified=False,
                    model_version=model_version,
                )
                result.applied[user] = tuple(e.event_id for e in updates[user])
        return result

    async def record_actions(self, actions: Mapping[SurfaceKey, Action]) -> None:
        return None


async def test_the_belief_stage_fails_only_the_refused_users_event() -> None:
    stage = BeliefStage(ErroringStore("bad"), clock=lambda: NOW, model_version="m", error_floor=FLOOR)  # type: ignore[arg-type]
    users = ("a", "bad", "c")
    requests = [
        BeliefRequest(u, [Evidence(f"e-{u}", NOW, 20.0, 2.0)], SurfaceKey(u, "GB", "adult_content")) for u in users
    ]
    (round_,) = rounds_by_depth(requests)
    out = await stage.fuse_round(round_, {})
    for user in ("a", "c"):
        fused = out[users.index(user)]
        assert isinstance(fused, Fused)
        belief, previous, refused = fused.belief, fused.previous, fused.refused
        assert belief is not None
        assert belief.observations == 1
        assert (previous, refused) == (None, 0)
    caught = out[users.index("bad")]
    assert isinstance(caught, BeliefUpdateFailed)
    assert caught.reason == "belief_update_failed"
