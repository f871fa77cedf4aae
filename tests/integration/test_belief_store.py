"""The Redis belief store against a real Redis and a real Redis Cluster: one contract for both.

Lua == Python, atomicity, idempotency, TTL, NOSCRIPT, and user ids of any content. Every test runs
twice: `[redis]` against the plain server, `[cluster]` against the Redis Cluster (locally one node
owning all 16384 slots, which enforces the same CROSSSLOT rule as a many-node cluster), each through
`stream.pipeline.assemble.redis_client`, the factory the worker and replay use.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from stream.belief import YEAR_S, Belief, Evidence, apply_verified, event_evidence, fuse, verified_refusal
from stream.belief_store import (
    BeliefStore,
    BeliefUpdateFailed,
    RedisClient,
    SurfaceKey,
    VerifiedAgeRefused,
    user_tag,
)
from stream.config import load_settings
from stream.errors import DependencyUnavailable
from stream.memory_store import JournaledBeliefStore
from stream.pipeline.assemble import redis_client
from stream.policy import Action, PolicyEvent, decide, load_policy

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
        await client.delete(*keys[i:i + 500])


@pytest.fixture
def store(client: RedisClient, prefix: str) -> BeliefStore:
    return BeliefStore(client, prefix=prefix, half_life_s=HALF_LIFE, ttl_s=TTL)


def same(a: Belief | None, b: Belief | None) -> None:
    assert a is not None
    assert b is not None
    assert a.birth_time == pytest.approx(b.birth_time, rel=0, abs=1e-3)  # seconds
    assert a.precision == pytest.approx(b.precision, rel=1e-12)
    assert (a.updated_at, a.observations, a.verified, a.model_version, a.floor) == (
        b.updated_at, b.observations, b.verified, b.model_version, b.floor)


def random_evidence(rnd: random.Random, ids: list[str], now: float) -> Evidence:
    kind = rnd.random()
    if ids and kind < 0.15:
        return Evidence(rnd.choice(ids), now - rnd.uniform(0, 30 * DAY), 20.0, 2.0)  # a redelivery
    eid = uuid.uuid4().hex
    ids.append(eid)
    if kind < 0.2:
        return Evidence(eid, now + rnd.choice([400.0, 10 * DAY]), 20.0, 2.0)  # too far in the future
    if kind < 0.25:
        return Evidence(eid, now - TTL - rnd.uniform(1, DAY), 20.0, 2.0)  # too old
    if kind < 0.3:
        return Evidence(eid, now, rnd.choice([math.nan, -3.0, 200.0]), rnd.choice([2.0, 0.0, math.inf]))
    if kind < 0.35:
        return Evidence(eid, now + rnd.uniform(0, 299), rnd.uniform(5, 60), rnd.uniform(0.5, 6))  # clamped
    return Evidence(eid, now - rnd.uniform(0, 200 * DAY), rnd.uniform(5, 60), rnd.uniform(0.5, 6))


async def test_lua_equals_python_on_random_histories(store: BeliefStore) -> None:
    """300 users, 6 rounds of pipelined batches, mixed with verified ages: every state and outcome agrees."""
    rnd = random.Random(20240601)
    users = [f"u{i}" for i in range(300)]
    model: dict[str, tuple[Belief | None, frozenset[str]]] = {u: (None, frozenset()) for u in users}
    ids: dict[str, list[str]] = {u: [] for u in users}
    skew = store.skew
    for round_no in range(6):
        now = NOW + round_no * 20 * DAY
        batch = {u: [random_evidence(rnd, ids[u], now) for _ in range(rnd.randint(1, 5))] for u in users}
        floor = FLOOR * (round_no % 3)  # versions with different floors: the belief keeps the largest
        result = await store.apply(batch, now=now, model_version=f"m{round_no}", floor=floor)
        for u in users:
            belief, seen = model[u]
            r = fuse(belief, batch[u], now=now, half_life_s=HALF_LIFE, model_version=f"m{round_no}", floor=floor,
                     seen=seen, skew=skew)
            model[u] = (r.belief, r.seen)
            assert result.applied[u] == r.applied
            assert result.duplicates[u] == r.duplicates
            assert result.ignored[u] == r.ignored
            assert result.refused[u] == r.refused
            if r.belief is None:
                assert u not in result
            else:
                same(result[u], r.belief)
        for u in rnd.sample(users, 20):  # some users get verified between rounds
            age, at = rnd.uniform(10, 40), now - rnd.uniform(0, 5 * 365 * DAY)
            eid = uuid.uuid4().hex
            got = await store.apply_verified(u, event_id=eid, verified_age=age, verified_at=at, now=now)
            assert verified_refusal(eid, age, at, now, skew) is None
            expected = apply_verified(model[u][0], verified_age=age, verified_at=at, now=now)
            same(got, expected)
            model[u] = (expected, model[u][1] | {eid})


async def test_concurrent_updates_of_one_user_lose_nothing(connect: Connect, prefix: str) -> None:
    """Twenty tasks on twenty connections update one user at once; every observation survives."""
    clients = [connect() for _ in range(20)]
    try:
        stores = [BeliefStore(c, prefix=prefix, half_life_s=HALF_LIFE, ttl_s=TTL) for c in clients]
        batches = [
            [Evidence(f"t{k}-{j}", NOW - (k * 5 + j) * 3600.0, 10.0 + k + j / 5, 1.0 + j / 4) for j in range(5)]
            for k in range(20)
        ]
        await asyncio.gather(*(s.apply({"alice": b}, now=NOW, model_version="m", floor=FLOOR) for s, b in
                               zip(stores, batches, strict=True)))
        got = (await stores[0].get_many(["alice"], now=NOW))["alice"]
        everything = [e for b in batches for e in b]
        expected = fuse(None, everything, now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR).belief
        assert got is not None
        assert expected is not None
        assert got.observations == 100
        # Order of arrival differs from the pure run; fusion is order-independent up to rounding.
        assert got.precision == pytest.approx(expected.precision, rel=1e-9)
        assert got.birth_time == pytest.approx(expected.birth_time, abs=1.0)
    finally:
        for c in clients:
            await c.aclose()


async def test_redelivered_events_change_nothing(store: BeliefStore, client: RedisClient) -> None:
    evs = [Evidence("a", NOW - DAY, 20.0, 2.0), Evidence("b", NOW, 22.0, 3.0)]
    first = await store.apply({"bob": evs}, now=NOW, model_version="m", floor=FLOOR)
    raw_before = await client.hgetall(store.belief_key("bob"))
    again = await store.apply({"bob": [*evs, Evidence("c", NOW, 21.0, 2.0)]}, now=NOW + 60, model_version="m",
                              floor=FLOOR)
    assert again.duplicates["bob"] == ("a", "b")
    assert again.applied["bob"] == ("c",)
    assert again["bob"].observations == 3
    once_more = await store.apply({"bob": evs}, now=NOW + 120, model_version="m", floor=FLOOR)
    assert once_more.applied["bob"] == ()
    assert once_more["bob"] == again["bob"]
    assert first["bob"].observations == 2
    assert raw_before[b"n"] == b"2"
    v1 = await store.apply_verified("bob", event_id="v", verified_age=19.0, verified_at=NOW, now=NOW + 200)
    v2 = await store.apply_verified("bob", event_id="v", verified_age=19.0, verified_at=NOW, now=NOW + 300)
    assert v1 == v2
    assert v1.verified
    assert v1.observations == 4


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
    r = await store.apply({"erin": [Evidence("b", NOW, 24.0, 2.0)], "frank": [Evidence("c", NOW, 30.0, 3.0)]},
                          now=NOW, model_version="m", floor=FLOOR)
    assert r["erin"].observations == 2
    assert r["frank"].observations == 1
    assert await client.script_exists(sha) == [True]
    await client.script_flush()
    b = await store.apply_verified("erin", event_id="v", verified_age=18.0, verified_at=NOW, now=NOW)
    assert b.verified


async def test_a_batch_of_1000_users_in_one_round_trip(store: BeliefStore, client: RedisClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # loads the script
    await store.apply({"warmup": [Evidence("w", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    pipelines = 0
    real_pipeline = client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", counting_pipeline)
    batch = {f"user{i}": [Evidence(f"e{i}", NOW, 10 + i % 50, 2.0), Evidence(f"f{i}", NOW - DAY, 11 + i % 50, 3.0)]
             for i in range(1000)}
    result = await store.apply(batch, now=NOW, model_version="m", floor=FLOOR)
    assert pipelines == 1
    assert len(result) == 1000
    for i in (0, 499, 999):
        expected = fuse(None, batch[f"user{i}"], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR).belief
        same(result[f"user{i}"], expected)
    read = await store.get_many(list(batch), now=NOW)
    assert all(b is not None and b.observations == 2 for b in read.values())


async def test_get_many_decays_to_now_and_reports_missing(store: BeliefStore) -> None:
    await store.apply({"gina": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    got = await store.get_many(["gina", "nobody"], now=NOW + HALF_LIFE)
    assert got["nobody"] is None
    gina = got["gina"]
    assert gina is not None
    assert gina.precision == pytest.approx(0.25 / 2)
    assert gina.age_at(NOW + HALF_LIFE) == pytest.approx(20.0 + HALF_LIFE / YEAR_S)


async def test_refused_evidence_is_reported_and_verified_refusal_raises(store: BeliefStore) -> None:
    r = await store.apply({"hank": [Evidence("future", NOW + 3600, 20.0, 2.0)]}, now=NOW, model_version="m",
                          floor=FLOOR)
    assert "hank" not in r
    assert [x.event_id for x in r.refused["hank"]] == ["future"]
    with pytest.raises(VerifiedAgeRefused):
        await store.apply_verified("hank", event_id="v", verified_age=20.0, verified_at=NOW + 3600, now=NOW)


async def test_previous_actions_round_trip(store: BeliefStore) -> None:
    key = SurfaceKey("ivy", "GB", "adult_content")
    assert await store.get_previous_actions([key]) == {key: None}
    await store.record_actions({key: Action.RESTRICT})
    assert await store.get_previous_actions([key]) == {key: Action.RESTRICT}
    r = await store.apply({"ivy": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert r.previous_actions["ivy"] == {"GB/adult_content": Action.RESTRICT}


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


async def test_worked_example_signup_three_uploads_verified_age(store: BeliefStore) -> None:
    """A 15-year-old claiming 21: belief and actions after each event (numbers quoted in the README)."""
    policy = load_policy()
    surfaces = ("messaging_unknown_adults", "adult_content")
    user, declared = "zoe", 21.0

    async def decide_all(t: float) -> dict[str, tuple[Action, tuple[str, ...]]]:
        belief = (await store.get_many([user], now=t))[user]
        keys = [SurfaceKey(user, "DEFAULT", s) for s in surfaces]
        prev = await store.get_previous_actions(keys)
        out = {}
        for key in keys:
            d = decide(belief, PolicyEvent("DEFAULT", key.surface, t, declared, prev[key]), policy,
                       half_life_s=store.half_life_s)
            out[key.surface] = (d.action, d.reason_codes)
        await store.record_actions({k: out[k.surface][0] for k in keys})
        return out

    RV, BLOCK, ALLOW = Action.REQUIRE_VERIFICATION, Action.BLOCK, Action.ALLOW
    # Day 0, signup with a declared age and no selfie: no belief, nothing allowed.
    assert await decide_all(NOW) == {s: (RV, ("no_belief",)) for s in surfaces}
    # Each upload: one frame with calibrated std 2.33 from a model whose error floor is 1.2 years, so
    # 2.0 years of it is independent: the belief's std is sqrt(4/n + 1.2^2), never below 1.2.
    floor = 1.2
    frame_std = math.sqrt(4.0 + floor**2)
    contradicted = "declared_age_contradicted"
    steps = [
        ("up1", NOW + 1 * DAY, 14.0, 14.0, frame_std,
         {"messaging_unknown_adults": (RV, ("insufficient_evidence",)),
          "adult_content": (BLOCK, ("estimated_under_age",))}),
        ("up2", NOW + 2 * DAY, 13.5, 13.75, math.sqrt(2.0 + floor**2),
         {"messaging_unknown_adults": (RV, ("uncertain", contradicted)),
          "adult_content": (BLOCK, ("estimated_under_age", contradicted))}),
        ("up3", NOW + 3 * DAY, 14.2, 13.9, math.sqrt(4.0 / 3 + floor**2),
         {"messaging_unknown_adults": (RV, ("uncertain", contradicted)),
          "adult_content": (BLOCK, ("estimated_under_age", contradicted))}),
    ]
    for event_id, at, mean, age, std, expected in steps:
        ev = event_evidence(event_id, at, [(mean, frame_std)], floor)
        assert ev is not None
        r = await store.apply({user: [ev]}, now=at, model_version="m1", floor=floor)
        b = r[user]
        assert b.age_at(at) == pytest.approx(age, abs=0.01)
        assert b.std_at(at, HALF_LIFE) == pytest.approx(std, abs=0.001)
        assert await decide_all(at) == expected
    # Day 10, an ID check says 17.0: authoritative, overriding the estimate and the held RESTRICT.
    v = await store.apply_verified(user, event_id="id-check", verified_age=17.0, verified_at=NOW + 10 * DAY,
                                   now=NOW + 10 * DAY)
    assert v.verified
    assert v.age_at(NOW + 10 * DAY) == pytest.approx(17.0)
    assert await decide_all(NOW + 10 * DAY) == {
        "messaging_unknown_adults": (ALLOW, ("verified_age",)),
        "adult_content": (BLOCK, ("verified_under_age",)),
    }
    # A later upload that looks 25 changes nothing: the verified belief ignores estimates.
    r = await store.apply({user: [Evidence("up4", NOW + 11 * DAY, 25.0, 2.0)]}, now=NOW + 11 * DAY,
                          model_version="m1", floor=FLOOR)
    assert r.ignored[user] == ("up4",)
    assert r[user] == v


# Ids that broke the raw `{user_id}` hash tag (empty, braces) or that no key name should carry
# (10 KB, control characters, text that is not valid UTF-8 on its own).
ODD_IDS = ["", "}", "{", "}{", "{}", "{abc}", "abc", "x" * 10_240, "a\x00b", "line\nbreak", "\r\n", " ",
           "\U0001f476\U0001f3fd emoji", "\udc80lone-surrogate", "\ud800", "caf\u00e9", "cafe\u0301"]


async def server_slot(client: RedisClient, key: str) -> int:
    """The slot the server itself assigns (CLUSTER KEYSLOT) or, on a plain Redis, redis-py's CRC16."""
    if isinstance(client, aioredis.RedisCluster):
        return int(await client.cluster_keyslot(key))
    return int(key_slot(key.encode()))


async def test_any_user_id_updates_in_one_slot_and_users_never_collide(store: BeliefStore, client: RedisClient,
                                                                       prefix: str) -> None:
    users = {u: i for i, u in enumerate(ODD_IDS)}
    first = {u: [Evidence(f"a{i}", NOW - DAY, 10.0 + i, 2.0)] for u, i in users.items()}
    second = {u: [Evidence(f"b{i}", NOW, 11.0 + i, 3.0)] for u, i in users.items()}
    r1 = await store.apply(first, now=NOW, model_version="m", floor=FLOOR)
    assert r1.errors == {}
    assert {u: r1.applied[u] for u in users} == {u: (f"a{i}",) for u, i in users.items()}
    r2 = await store.apply(second, now=NOW, model_version="m", floor=FLOOR)
    assert r2.errors == {}
    for u in users:  # a collision would fuse another user's evidence in: counts and ages would differ
        expected = fuse(None, [*first[u], *second[u]], now=NOW, half_life_s=HALF_LIFE, model_version="m",
                        floor=FLOOR).belief
        same(r2[u], expected)
        assert r2[u].observations == 2
    keys = {u: (store.belief_key(u), store.events_key(u)) for u in users}
    assert len({b for b, _ in keys.values()} | {e for _, e in keys.values()}) == 2 * len(users)
    for b, e in keys.values():
        assert await server_slot(client, b) == await server_slot(client, e)
        assert len(b) == len(e) == len(prefix) + len(":{}:b") + 32  # bounded, whatever the id's size
        assert await client.exists(b) + await client.exists(e) == 2
    assert b"abc" not in store.belief_key("{abc}").encode()  # the raw id is not in the key name
    # The other commands of a user: hysteresis state, reads, verified ages, deletion.
    surface = {u: SurfaceKey(u, "GB", "adult_content") for u in users}
    await store.record_actions({k: Action.RESTRICT for k in surface.values()})
    assert set((await store.get_previous_actions(list(surface.values()))).values()) == {Action.RESTRICT}
    v = await store.apply_verified("", event_id="v", verified_age=30.0, verified_at=NOW, now=NOW)
    assert v.verified
    read = await store.get_many(list(users), now=NOW)
    assert read[""] == v
    assert all(b is not None and b.observations == 2 for u, b in read.items() if u != "")
    await store.delete(list(users))
    assert set((await store.get_many(list(users), now=NOW)).values()) == {None}
    for b, e in keys.values():
        assert await client.exists(b) + await client.exists(e) == 0


async def test_a_script_error_for_one_user_spares_the_rest_of_the_batch(store: BeliefStore,
                                                                       client: RedisClient) -> None:
    """A foreign value in one user's key: that user's update fails alone, typed, with no user id in it."""
    await client.set(store.belief_key("poisoned-user"), "not a hash")
    batch = {u: [Evidence(f"e-{u}", NOW, 20.0, 2.0)] for u in ("before", "poisoned-user", "after")}
    result = await store.apply(batch, now=NOW, model_version="m", floor=FLOOR)
    assert set(result.errors) == {"poisoned-user"}
    error = result.errors["poisoned-user"]
    assert isinstance(error, BeliefUpdateFailed)
    assert error.reason == "belief_update_failed"
    assert "WRONGTYPE" in error.detail
    assert "poisoned-user" not in error.detail
    assert "poisoned-user" not in result
    assert result.applied["before"] == ("e-before",)
    assert result.applied["after"] == ("e-after",)
    assert await client.get(store.belief_key("poisoned-user")) == b"not a hash"  # nothing half applied
    with pytest.raises(BeliefUpdateFailed):
        await store.apply_verified("poisoned-user", event_id="v", verified_age=20.0, verified_at=NOW, now=NOW)
    # Reads batched with other users (a verified age's prior, hysteresis state) read it as absent.
    read = await store.get_many(["before", "poisoned-user"], now=NOW)
    assert read["poisoned-user"] is None
    assert read["before"] == result["before"]
    keys = [SurfaceKey(u, "GB", "adult_content") for u in ("before", "poisoned-user")]
    await store.record_actions({keys[0]: Action.RESTRICT, keys[1]: Action.BLOCK})  # the poisoned one is skipped
    assert await store.get_previous_actions(keys) == {keys[0]: Action.RESTRICT, keys[1]: None}
    # A hash with values we never write there reads as absent too.
    await client.hset(store.belief_key("garbled"), mapping={"B": "x", "a:GB/adult_content": "MAYBE"})
    assert (await store.get_many(["garbled"], now=NOW))["garbled"] is None
    garbled = SurfaceKey("garbled", "GB", "adult_content")
    assert await store.get_previous_actions([garbled]) == {garbled: None}


async def test_replay_journal_rolls_back_odd_ids_and_keeps_raw_ids_out_of_redis(client: RedisClient,
                                                                                prefix: str) -> None:
    """The replay's undo journal (stream/memory_store.py) on both backends, keyed by the user's tag."""
    journal = JournaledBeliefStore(client, prefix=prefix, half_life_s=HALF_LIFE, ttl_s=TTL)
    users = ["", "}", "{abc}"]
    await journal.apply({u: [Evidence(f"a-{i}", NOW, 20.0, 2.0)] for i, u in enumerate(users)}, now=NOW,
                        model_version="m", floor=FLOOR)
    await journal.commit(1)
    await journal.apply({u: [Evidence(f"b-{i}", NOW, 30.0, 2.0)] for i, u in enumerate([*users, "new"])},
                        now=NOW, model_version="m", floor=FLOOR)
    fields = await client.hkeys(journal.journal_key(1))
    tags = sorted(f.decode() if isinstance(f, bytes) else f for f in fields)
    assert tags == sorted(user_tag(u) for u in [*users, "new"])
    assert await journal.rollback() == 4
    after = await journal.get_many([*users, "new"], now=NOW)
    assert after["new"] is None
    assert all(b is not None and b.observations == 1 for u, b in after.items() if u != "new")
    assert await journal.drop_namespace() > 0
    assert [k async for k in client.scan_iter(match=f"{prefix}:*")] == []


async def test_the_event_id_log_keeps_the_newest_5000_per_user(store: BeliefStore, client: RedisClient) -> None:
    """A user with very many events cannot grow their id log without bound (one id per event)."""
    evs = [Evidence(f"ev{i:05d}", NOW - 5005 + i, 20.0, 2.0) for i in range(5005)]
    result = await store.apply({"prolific": evs}, now=NOW, model_version="m", floor=FLOOR)
    assert len(result.applied["prolific"]) == 5005
    assert await client.zcard(store.events_key("prolific")) == 5000
    again = await store.apply({"prolific": [evs[-1], evs[0]]}, now=NOW, model_version="m", floor=FLOOR)
    assert again.duplicates["prolific"] == ("ev05004",)  # the newest are remembered
    assert again.applied["prolific"] == ("ev00000",)  # the oldest were forgotten (and count again)
