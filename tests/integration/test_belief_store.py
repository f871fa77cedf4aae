"""The Redis belief store against a real Redis and a real Redis Cluster: what is Redis's alone.

TTLs on the server, NOSCRIPT recovery, one round trip per batch, outages, key names and slots for user
ids of any content, script errors, the replay's undo journal. The store's behaviour (idempotency,
fusion equal to stream/core/belief.py, decay, verified ages, skew, previous actions, per-user errors,
retention) is the contract in tests/contract/test_belief_repository.py, run against this store and the
in-memory one. Every test here runs twice: `[redis]` against the plain server, `[cluster]` against the
Redis Cluster (locally one node owning all 16384 slots, which enforces the same CROSSSLOT rule as a
many-node cluster), each through `stream.pipeline.assemble.redis_client`, the factory the worker and replay use.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from stream.adapters.belief_store import BeliefStore, RedisClient, user_tag
from stream.adapters.journaled_store import JournaledBeliefStore
from stream.config import load_settings
from stream.core.belief import Belief, Evidence, fuse
from stream.core.belief_updates import SurfaceKey
from stream.core.policy import Action
from stream.errors import DependencyUnavailable
from stream.pipeline.assemble import redis_client
from tests.support.odd_ids import ODD_IDS

pytestmark = pytest.mark.integration

FLOOR = 1.5
NOW = 1_750_000_000.0
DAY = 86400.0
HALF_LIFE = 365 * DAY
TTL = 400 * DAY


Connect = Callable[[], RedisClient]


def connector(url: str, *, cluster: bool) -> Connect:
    settings = load_settings(environ={}, redis_url=url, redis_cluster=cluster)
    return lambda: redis_client(settings)


@pytest.fixture(params=["redis", "cluster"])
def connect(request: pytest.FixtureRequest) -> Connect:
    """A client factory for the plain Redis or the Redis Cluster (the fixture's parameter)."""
    if request.param == "redis":
        return connector(request.getfixturevalue("redis_url"), cluster=False)
    return connector(request.getfixturevalue("redis_cluster_url"), cluster=True)


@pytest.fixture
async def client(connect: Connect) -> AsyncIterator[RedisClient]:
    c = connect()
    yield c
    await c.aclose()


@pytest.fixture
async def prefix(client: RedisClient) -> AsyncIterator[str]:
    """A namespace of this test alone, removed afterwards so a shared Redis does not fill up."""
    p = f"t{uuid.uuid4().hex[:10]}"
    yield p
    keys = [k async for k in client.scan_iter(match=f"{p}:*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])


@pytest.fixture
def store(client: RedisClient, prefix: str) -> BeliefStore:
    return BeliefStore(client, prefix=prefix, half_life_s=HALF_LIFE, ttl_s=TTL)


def same(a: Belief | None, b: Belief | None) -> None:
    assert a is not None
    assert b is not None
    assert a.birth_time == pytest.approx(b.birth_time, rel=0, abs=1e-3)  # seconds
    assert a.precision == pytest.approx(b.precision, rel=1e-12)
    assert (a.updated_at, a.observations, a.verified, a.model_version, a.floor) == (
        b.updated_at,
        b.observations,
        b.verified,
        b.model_version,
        b.floor,
    )


async def test_ttl_is_set_and_refreshed_on_both_keys(store: BeliefStore, client: RedisClient) -> None:
    await store.apply({"carol": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    ttl_ms = TTL * 1000
    for key in (store.belief_key("carol"), store.events_key("carol")):
        pttl = await client.pttl(key)
        assert ttl_ms - 60_000 < pttl <= ttl_ms
    await client.pexpire(store.belief_key("carol"), 5_000)
    await store.apply({"carol": [Evidence("b", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert await client.pttl(store.belief_key("carol")) > ttl_ms - 60_000
    # Hysteresis state on a user with no belief yet gets a TTL too, and never extends an existing one.
    await store.record_actions({SurfaceKey("dave", "DEFAULT", "adult_content"): Action.BLOCK})
    assert 0 < await client.pttl(store.belief_key("dave")) <= ttl_ms
    await client.pexpire(store.belief_key("carol"), 5_000)
    await store.record_actions({SurfaceKey("carol", "DEFAULT", "adult_content"): Action.ALLOW})
    assert await client.pttl(store.belief_key("carol")) <= 5_000


async def test_noscript_after_script_flush_is_recovered(store: BeliefStore, client: RedisClient) -> None:
    await store.apply({"erin": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    sha = store._script.sha
    await client.script_flush()
    assert await client.script_exists(sha) == [False]
    r = await store.apply(
        {"erin": [Evidence("b", NOW, 24.0, 2.0)], "frank": [Evidence("c", NOW, 30.0, 3.0)]},
        now=NOW,
        model_version="m",
        floor=FLOOR,
    )
    assert r["erin"].observations == 2
    assert r["frank"].observations == 1
    assert await client.script_exists(sha) == [True]
    await client.script_flush()
    b = await store.apply_verified("erin", event_id="v", verified_age=18.0, verified_at=NOW, now=NOW)
    assert b.verified
    # Hysteresis state goes through the same script: every surface of a user in one call.
    await client.script_flush()
    keys = [SurfaceKey("erin", "GB", "adult_content"), SurfaceKey("erin", "GB", "messaging_unknown_adults")]
    await store.record_actions({keys[0]: Action.ALLOW, keys[1]: Action.RESTRICT})
    assert await store.get_previous_actions(keys) == {keys[0]: Action.ALLOW, keys[1]: Action.RESTRICT}


async def test_a_batch_of_1000_users_in_one_round_trip(
    store: BeliefStore, client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # loads the script
    await store.apply({"warmup": [Evidence("w", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    pipelines = commands = 0
    real_pipeline = client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        pipe = real_pipeline(*args, **kwargs)
        real_command = pipe.execute_command

        def counting_command(*a: Any, **k: Any) -> Any:
            nonlocal commands
            commands += 1
            return real_command(*a, **k)

        pipe.execute_command = counting_command  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(client, "pipeline", counting_pipeline)
    batch = {
        f"user{i}": [Evidence(f"e{i}", NOW, 10 + i % 50, 2.0), Evidence(f"f{i}", NOW - DAY, 11 + i % 50, 3.0)]
        for i in range(1000)
    }
    result = await store.apply(batch, now=NOW, model_version="m", floor=FLOOR)
    assert (pipelines, commands) == (1, 1000)  # one script call per user
    assert len(result) == 1000
    for i in (0, 499, 999):
        expected = fuse(None, batch[f"user{i}"], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR).belief
        same(result[f"user{i}"], expected)
    read = await store.get_many(list(batch), now=NOW)
    assert all(b is not None and b.observations == 2 for b in read.values())
    pipelines = commands = 0
    surfaces = ("adult_content", "messaging_unknown_adults")
    await store.record_actions({SurfaceKey(u, "GB", s): Action.RESTRICT for u in batch for s in surfaces})
    assert (pipelines, commands) == (1, 1000)  # hysteresis state: one call per user, whatever its surfaces


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
async def test_redis_down_is_dependency_unavailable(cluster: bool) -> None:
    settings = load_settings(environ={}, redis_url="redis://127.0.0.1:1/0", redis_cluster=cluster)
    dead = redis_client(settings)
    store = BeliefStore(dead, prefix="x", half_life_s=HALF_LIFE, ttl_s=TTL)
    with pytest.raises(DependencyUnavailable):
        await store.apply({"u": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    with pytest.raises(DependencyUnavailable):
        await store.get_many(["u"], now=NOW)
    await dead.aclose()


async def server_slot(client: RedisClient, key: str) -> int:
    """The slot the server itself assigns (CLUSTER KEYSLOT) or, on a plain Redis, redis-py's CRC16."""
    if isinstance(client, aioredis.RedisCluster):
        return int(await client.cluster_keyslot(key))
    return int(key_slot(key.encode()))


async def test_any_user_id_gets_both_keys_in_one_slot_and_no_raw_id_in_redis(
    store: BeliefStore, client: RedisClient, prefix: str
) -> None:
    """Key names and slots on the server (the behaviour for any id is in tests/contract/)."""
    users = {u: i for i, u in enumerate(ODD_IDS)}
    r = await store.apply(
        {u: [Evidence(f"a{i}", NOW, 10.0 + i, 2.0)] for u, i in users.items()}, now=NOW, model_version="m", floor=FLOOR
    )
    assert r.errors == {}
    await store.record_actions({SurfaceKey(u, "GB", "adult_content"): Action.RESTRICT for u in users})
    keys = {u: (store.belief_key(u), store.events_key(u)) for u in users}
    assert len({b for b, _ in keys.values()} | {e for _, e in keys.values()}) == 2 * len(users)
    for b, e in keys.values():
        assert await server_slot(client, b) == await server_slot(client, e)
        assert len(b) == len(e) == len(prefix) + len(":{}:b") + 32  # bounded, whatever the id's size
        assert await client.exists(b) + await client.exists(e) == 2
    assert b"abc" not in store.belief_key("{abc}").encode()  # the raw id is not in the key name
    await store.delete(list(users))
    for b, e in keys.values():
        assert await client.exists(b) + await client.exists(e) == 0


async def test_a_script_error_names_the_server_reason_and_leaves_the_value_alone(
    store: BeliefStore, client: RedisClient
) -> None:
    """A foreign value in one user's key (the contract is in tests/contract/): what Redis says and keeps."""
    await client.set(store.belief_key("poisoned-user"), "not a hash")
    batch = {u: [Evidence(f"e-{u}", NOW, 20.0, 2.0)] for u in ("before", "poisoned-user")}
    result = await store.apply(batch, now=NOW, model_version="m", floor=FLOOR)
    error = result.errors["poisoned-user"]
    assert "WRONGTYPE" in error.detail
    assert "poisoned-user" not in error.detail
    assert await client.get(store.belief_key("poisoned-user")) == b"not a hash"  # nothing half applied
    # A hash with values we never write there reads as absent too.
    await client.hset(store.belief_key("garbled"), mapping={"B": "x", "a:GB/adult_content": "MAYBE"})
    assert (await store.get_many(["garbled"], now=NOW))["garbled"] is None
    garbled = SurfaceKey("garbled", "GB", "adult_content")
    assert await store.get_previous_actions([garbled]) == {garbled: None}


async def test_replay_journal_rolls_back_odd_ids_and_keeps_raw_ids_out_of_redis(
    client: RedisClient, prefix: str
) -> None:
    """The replay's undo journal (stream/adapters/journaled_store.py) on both backends, keyed by the user's tag."""
    journal = JournaledBeliefStore(client, prefix=prefix, half_life_s=HALF_LIFE, ttl_s=TTL)
    users = ["", "}", "{abc}"]
    await journal.apply(
        {u: [Evidence(f"a-{i}", NOW, 20.0, 2.0)] for i, u in enumerate(users)}, now=NOW, model_version="m", floor=FLOOR
    )
    await journal.commit(1)
    await journal.apply(
        {u: [Evidence(f"b-{i}", NOW, 30.0, 2.0)] for i, u in enumerate([*users, "new"])},
        now=NOW,
        model_version="m",
        floor=FLOOR,
    )
    fields = await client.hkeys(journal.journal_key(1))
    tags = sorted(f.decode() if isinstance(f, bytes) else f for f in fields)
    assert tags == sorted(user_tag(u) for u in [*users, "new"])
    assert await journal.rollback() == 4
    after = await journal.get_many([*users, "new"], now=NOW)
    assert after["new"] is None
    assert all(b is not None and b.observations == 1 for u, b in after.items() if u != "new")
    assert await journal.drop_namespace() > 0
    assert [k async for k in client.scan_iter(match=f"{prefix}:*")] == []


async def test_the_event_id_log_holds_at_most_5000_ids_per_user(store: BeliefStore, client: RedisClient) -> None:
    """The memory bound on the server (which ids are remembered is in tests/contract/)."""
    evs = [Evidence(f"ev{i:05d}", NOW - 5005 + i, 20.0, 2.0) for i in range(5005)]
    result = await store.apply({"prolific": evs}, now=NOW, model_version="m", floor=FLOOR)
    assert len(result.applied["prolific"]) == 5005
    assert await client.zcard(store.events_key("prolific")) == 5000
