"""One contract for every belief repository: the in-memory store and the Redis `BeliefStore`.

Each test runs against `[memory]` (stream/adapters/memory_beliefs.py, a unit test), and against a
real Redis and a real Redis Cluster (`[redis]`, `[cluster]`: integration tests, failing under CI
when the service is unreachable). What is Redis's alone (the Lua script's NOSCRIPT recovery, round
trips, PTTLs, key names and slots, connection faults) stays in tests/integration/test_belief_store.py.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from stream.adapters.belief_store import BeliefStore, RedisClient
from stream.adapters.memory_beliefs import InMemoryBeliefStore
from stream.core.belief import (
    YEAR_S,
    Belief,
    ClockSkewRule,
    Evidence,
    RefusalReason,
    apply_verified,
    decay,
    event_evidence,
    fuse,
    verified_refusal,
)
from stream.core.belief_updates import BeliefUpdateFailed, SurfaceKey, VerifiedAgeRefused
from stream.core.policy import Action, PolicyEvent, decide, load_policy
from tests.support.odd_ids import ODD_IDS

pytestmark = pytest.mark.contract

FLOOR = 1.5
NOW = 1_750_000_000.0
DAY = 86400.0
HALF_LIFE = 365 * DAY
TTL = 400 * DAY

Repository = BeliefStore | InMemoryBeliefStore


class FakeClock:
    """The in-memory store's clock for retention: moved by the test, never by waiting."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Backend:
    """One implementation under test and what the tests need around it, the same for every backend."""

    name: str
    store: Repository
    # Another handle on the same state (Redis: its own connection), with other settings if given.
    handle: Callable[..., Repository]
    # Put a value the store never writes into a user's belief (a foreign type in Redis).
    corrupt: Callable[[str], Awaitable[None]]
    # Let retention time pass: the fake clock moves; Redis's own clock must run.
    advance: Callable[[float], None]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def memory_backend() -> Backend:
    clock = FakeClock()
    store = InMemoryBeliefStore(half_life_s=HALF_LIFE, ttl_s=TTL, clock=clock)

    def handle(**settings: object) -> Repository:
        if not settings:
            return store  # one process's state: every handle is the same store
        return InMemoryBeliefStore(**{"half_life_s": HALF_LIFE, "ttl_s": TTL, "clock": clock, **settings})  # type: ignore[arg-type]

    async def corrupt(user_id: str) -> None:
        store.corrupt(user_id)

    def advance(seconds: float) -> None:
        clock.t += seconds

    return Backend("memory", store, handle, corrupt, advance)


async def redis_backend(name: str, url: str) -> Backend:
    def connect() -> RedisClient:
        if name == "cluster":
            return aioredis.RedisCluster.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    client = connect()
    prefix = f"c{uuid.uuid4().hex[:10]}"  # this test's namespace alone
    store = BeliefStore(client, prefix=prefix, half_life_s=HALF_LIFE, ttl_s=TTL)
    closers: list[Callable[[], Awaitable[None]]] = []

    def handle(**settings: object) -> Repository:
        own = connect()  # its own connection, as another worker would have
        closers.append(own.aclose)
        return BeliefStore(own, **{"prefix": prefix, "half_life_s": HALF_LIFE, "ttl_s": TTL, **settings})  # type: ignore[arg-type]

    async def corrupt(user_id: str) -> None:
        await client.set(store.belief_key(user_id), "not a hash")

    async def cleanup() -> None:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await client.aclose()

    closers.append(cleanup)  # closed last: teardown runs the closers in reverse
    return Backend(name, store, handle, corrupt, lambda _: None, closers)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield memory_backend()
        return
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    b = await redis_backend(request.param, url)
    try:
        yield b
    finally:
        for close in reversed(b.closers):
            await close()


@pytest.fixture
def store(backend: Backend) -> Repository:
    return backend.store


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
    assert (a.floor_rms if a.floor_rms is not None else a.floor) == (
        b.floor_rms if b.floor_rms is not None else b.floor
    )
    assert a.floor_earlier == b.floor_earlier


def test_the_in_memory_store_has_the_public_api_of_the_redis_store() -> None:
    """Same public methods with the same signatures (the Redis key names are Redis's alone)."""
    redis_only = {"belief_key", "events_key"}

    def api(cls: type) -> dict[str, inspect.Signature]:
        return {
            n: inspect.signature(f)
            for n, f in inspect.getmembers(cls, inspect.isfunction)
            if not n.startswith("_") and n not in redis_only
        }

    memory_only = {"corrupt"}  # the test hook standing in for a foreign value in Redis
    memory = {n: s for n, s in api(InMemoryBeliefStore).items() if n not in memory_only}
    assert memory == api(BeliefStore)
    s = InMemoryBeliefStore(half_life_s=HALF_LIFE, ttl_s=TTL)
    assert (s.half_life_s, s.ttl_s, s.skew) == (HALF_LIFE, TTL, ClockSkewRule(max_past_s=TTL))


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
    # Each event's own floor (a model with a floor ratio): none, below or above the version's, or broken.
    floor = rnd.choice([0.0, rnd.uniform(0.5, 5.0), rnd.uniform(0.5, 5.0), math.nan])
    return Evidence(eid, now - rnd.uniform(0, 200 * DAY), rnd.uniform(5, 60), rnd.uniform(0.5, 6), floor)


async def test_the_store_agrees_with_the_pure_fusion_on_random_histories(store: Repository) -> None:
    """300 users, 6 rounds of batches mixed with verified ages: every state and outcome is stream/core/belief.py's."""
    rnd = random.Random(20240601)
    users = [f"u{i}" for i in range(300)]
    model: dict[str, tuple[Belief | None, frozenset[str]]] = {u: (None, frozenset()) for u in users}
    ids: dict[str, list[str]] = {u: [] for u in users}
    skew = store.skew
    for round_no in range(6):
        now = NOW + round_no * 20 * DAY
        batch = {u: [random_evidence(rnd, ids[u], now) for _ in range(rnd.randint(1, 5))] for u in users}
        floor = FLOOR * (round_no % 3)  # versions with different floors: a switch never narrows the belief
        result = await store.apply(batch, now=now, model_version=f"m{round_no}", floor=floor)
        for u in users:
            belief, seen = model[u]
            r = fuse(
                belief,
                batch[u],
                now=now,
                half_life_s=HALF_LIFE,
                model_version=f"m{round_no}",
                floor=floor,
                seen=seen,
                skew=skew,
            )
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
    later = NOW + 200 * DAY
    read = await store.get_many(users, now=later)
    for u in users:
        belief = model[u][0]
        if belief is None:
            assert read[u] is None
        else:
            same(read[u], decay(belief, later, HALF_LIFE))


async def test_concurrent_updates_of_one_user_lose_nothing(backend: Backend) -> None:
    """Twenty tasks on twenty handles update one user at once; every observation survives."""
    stores = [backend.handle() for _ in range(20)]
    batches = [
        [Evidence(f"t{k}-{j}", NOW - (k * 5 + j) * 3600.0, 10.0 + k + j / 5, 1.0 + j / 4) for j in range(5)]
        for k in range(20)
    ]
    await asyncio.gather(
        *(s.apply({"alice": b}, now=NOW, model_version="m", floor=FLOOR) for s, b in zip(stores, batches, strict=True))
    )
    got = (await backend.store.get_many(["alice"], now=NOW))["alice"]
    everything = [e for b in batches for e in b]
    expected = fuse(None, everything, now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR).belief
    assert got is not None
    assert expected is not None
    assert got.observations == 100
    # Order of arrival differs from the pure run; fusion is order-independent up to rounding.
    assert got.precision == pytest.approx(expected.precision, rel=1e-9)
    assert got.birth_time == pytest.approx(expected.birth_time, abs=1.0)


async def test_redelivered_events_change_nothing(store: Repository) -> None:
    evs = [Evidence("a", NOW - DAY, 20.0, 2.0), Evidence("b", NOW, 22.0, 3.0)]
    first = await store.apply({"bob": evs}, now=NOW, model_version="m", floor=FLOOR)
    assert first.applied["bob"] == ("a", "b")
    assert first["bob"].observations == 2
    again = await store.apply(
        {"bob": [*evs, Evidence("c", NOW, 21.0, 2.0)]}, now=NOW + 60, model_version="m", floor=FLOOR
    )
    assert again.duplicates["bob"] == ("a", "b")
    assert again.applied["bob"] == ("c",)
    assert again["bob"].observations == 3
    once_more = await store.apply({"bob": evs}, now=NOW + 120, model_version="m", floor=FLOOR)
    assert once_more.applied["bob"] == ()
    assert once_more["bob"] == again["bob"]
    v1 = await store.apply_verified("bob", event_id="v", verified_age=19.0, verified_at=NOW, now=NOW + 200)
    v2 = await store.apply_verified("bob", event_id="v", verified_age=25.0, verified_at=NOW, now=NOW + 300)
    assert v1 == v2
    assert v1.verified
    assert v1.observations == 4
    assert (await store.get_many(["bob"], now=NOW))["bob"] == v1


async def test_events_of_one_user_keep_their_order_and_late_ones_count_as_if_in_order(store: Repository) -> None:
    """Outcomes come in input order; an id repeated in one batch counts once, its first valid occurrence."""
    batch = [
        Evidence("x", NOW, math.nan, 2.0),
        Evidence("x", NOW - DAY, 30.0, 2.0),
        Evidence("y", NOW, 10.0, 1.0),
        Evidence("x", NOW, 50.0, 2.0),
    ]
    r = await store.apply({"olga": batch}, now=NOW, model_version="m", floor=FLOOR)
    assert r.applied["olga"] == ("x", "y")
    assert r.duplicates["olga"] == ("x",)
    assert [(x.event_id, x.reason) for x in r.refused["olga"]] == [("x", RefusalReason.INVALID)]
    expected = fuse(None, batch[1:3], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR).belief
    same(r["olga"], expected)
    # A late event (older than the belief) arriving after the newer one gives what in-order arrival gives.
    early, late = Evidence("e1", NOW - 30 * DAY, 16.0, 2.0), Evidence("e2", NOW - 10 * DAY, 17.0, 1.5)
    await store.apply({"pia": [late]}, now=NOW, model_version="m", floor=FLOOR)
    out_of_order = await store.apply({"pia": [early]}, now=NOW, model_version="m", floor=FLOOR)
    await store.apply({"quinn": [early]}, now=NOW, model_version="m", floor=FLOOR)
    in_order = await store.apply({"quinn": [late]}, now=NOW, model_version="m", floor=FLOOR)
    assert out_of_order["pia"].updated_at == in_order["quinn"].updated_at == NOW - 10 * DAY
    assert out_of_order["pia"].precision == pytest.approx(in_order["quinn"].precision, rel=1e-12)
    assert out_of_order["pia"].birth_time == pytest.approx(in_order["quinn"].birth_time, abs=1e-3)


async def test_get_many_decays_to_now_and_reports_missing(store: Repository) -> None:
    await store.apply({"gina": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    got = await store.get_many(["gina", "nobody"], now=NOW + HALF_LIFE)
    assert got["nobody"] is None
    gina = got["gina"]
    assert gina is not None
    assert gina.precision == pytest.approx(0.25 / 2)
    assert gina.updated_at == NOW + HALF_LIFE
    assert gina.age_at(NOW + HALF_LIFE) == pytest.approx(20.0 + HALF_LIFE / YEAR_S)
    # Reading never changes what is stored: a read at an earlier time sees the undecayed belief.
    assert (await store.get_many(["gina"], now=NOW))["gina"].precision == pytest.approx(0.25)  # type: ignore[union-attr]
    # Decay over time also weighs old evidence less when new evidence arrives.
    r = await store.apply(
        {"gina": [Evidence("b", NOW + HALF_LIFE, 30.0, 2.0)]}, now=NOW + HALF_LIFE, model_version="m", floor=FLOOR
    )
    assert r["gina"].precision == pytest.approx(0.25 / 2 + 0.25)
    # Birth times: 20 y before NOW (weight 1/8) and 30 y before NOW + HALF_LIFE (weight 1/4).
    b_old, b_new = NOW - 20.0 * YEAR_S, NOW + HALF_LIFE - 30.0 * YEAR_S
    assert r["gina"].birth_time == pytest.approx((b_old + 2 * b_new) / 3, abs=1e-3)


async def test_a_verified_age_overrides_estimates_and_does_not_decay(store: Repository) -> None:
    await store.apply({"val": [Evidence("a", NOW - DAY, 25.0, 2.0)]}, now=NOW, model_version="m1", floor=FLOOR)
    v = await store.apply_verified("val", event_id="id", verified_age=16.0, verified_at=NOW, now=NOW)
    assert v.verified
    assert v.age_at(NOW) == pytest.approx(16.0)
    assert (v.observations, v.model_version, v.floor) == (2, "m1", 0.0)  # the floor does not apply to an ID
    later = await store.apply(
        {"val": [Evidence("b", NOW + DAY, 30.0, 1.0)]}, now=NOW + DAY, model_version="m2", floor=FLOOR
    )
    assert later.ignored["val"] == ("b",)
    assert later.applied["val"] == ()
    assert later["val"] == v
    again = await store.apply(
        {"val": [Evidence("b", NOW + DAY, 30.0, 1.0)]}, now=NOW + DAY, model_version="m2", floor=FLOOR
    )
    assert again.duplicates["val"] == ("b",)  # an ignored event's id is remembered too
    read = (await store.get_many(["val"], now=NOW + 10 * HALF_LIFE))["val"]
    assert read is not None
    assert read.precision == v.precision
    assert read.age_at(NOW) == pytest.approx(16.0)


async def test_the_belief_keeps_the_largest_error_floor_of_the_versions_fused(store: Repository) -> None:
    r1 = await store.apply({"fay": [Evidence("a", NOW, 20.0, 0.5)]}, now=NOW, model_version="m1", floor=2.0)
    assert r1["fay"].floor == 2.0
    r2 = await store.apply({"fay": [Evidence("b", NOW, 20.0, 0.5)]}, now=NOW, model_version="m2", floor=1.0)
    assert (r2["fay"].floor, r2["fay"].model_version) == (2.0, "m2")
    many = {"fay": [Evidence(f"c{i}", NOW, 20.0, 0.5) for i in range(200)]}
    r3 = await store.apply(many, now=NOW, model_version="m2", floor=1.0)
    assert r3["fay"].std_at(NOW, HALF_LIFE) >= 2.0  # a thousand selfies never beat the floor
    assert r3["fay"].std_at(NOW, HALF_LIFE) == pytest.approx(math.sqrt(0.25 / 202 + 4.0))


async def test_each_event_counts_with_its_own_floor_weighted_like_the_mean(store: Repository) -> None:
    """A model with a floor ratio: the belief's floor is the rms of its events' floors under the
    precisions that weigh its mean, never below the version's least floor."""
    sure, unsure = Evidence("a", NOW, 10.0, 1.0, 1.5), Evidence("b", NOW, 24.0, 2.0, 3.0)
    got = (await store.apply({"kim": [sure, unsure]}, now=NOW, model_version="m", floor=1.0))["kim"]
    # precisions 1 and 1/4: floor^2 = (1 * 1.5^2 + 0.25 * 3^2) / 1.25
    assert got.floor == pytest.approx(math.sqrt((2.25 + 0.25 * 9.0) / 1.25))
    assert got.age_at(NOW) == pytest.approx((10.0 + 0.25 * 24.0) / 1.25)
    low = await store.apply({"lee": [Evidence("c", NOW, 20.0, 1.0, 0.2)]}, now=NOW, model_version="m", floor=1.0)
    assert low["lee"].floor == 1.0  # an event claiming less than the version's least floor gets that


async def test_evidence_outside_the_clock_skew_window_is_refused(store: Repository) -> None:
    tol, past = store.skew.future_tolerance_s, store.skew.max_past_s
    batch = [
        Evidence("far-future", NOW + tol + 1, 20.0, 2.0),
        Evidence("too-old", NOW - past - 1, 20.0, 2.0),
        Evidence("near-future", NOW + tol - 1, 20.0, 2.0),
        Evidence("oldest-kept", NOW - past + 1, 20.0, 2.0),
    ]
    r = await store.apply({"sam": batch}, now=NOW, model_version="m", floor=FLOOR)
    assert [(x.event_id, x.reason, x.observed_at) for x in r.refused["sam"]] == [
        ("far-future", RefusalReason.FUTURE, NOW + tol + 1),
        ("too-old", RefusalReason.TOO_OLD, NOW - past - 1),
    ]
    assert r.applied["sam"] == ("near-future", "oldest-kept")
    assert r["sam"].updated_at == NOW  # a small future skew is clamped to now
    # A refused id is not remembered: once valid it applies.
    r2 = await store.apply(
        {"sam": [Evidence("far-future", NOW + tol + 1, 20.0, 2.0)]}, now=NOW + 2, model_version="m", floor=FLOOR
    )
    assert r2.applied["sam"] == ("far-future",)
    # Only everything refused: no belief, and nothing stored.
    r3 = await store.apply(
        {"hank": [Evidence("future", NOW + 3600, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR
    )
    assert "hank" not in r3
    assert [x.event_id for x in r3.refused["hank"]] == ["future"]
    assert (await store.get_many(["hank"], now=NOW))["hank"] is None
    # Verified ages: refused when dated beyond the tolerance (typed, with its reason), never for age.
    with pytest.raises(VerifiedAgeRefused) as refused:
        await store.apply_verified("hank", event_id="v", verified_age=20.0, verified_at=NOW + 3600, now=NOW)
    assert refused.value.reason == "verified_age_future"
    old = await store.apply_verified("hank", event_id="v2", verified_age=20.0, verified_at=NOW - 10 * TTL, now=NOW)
    assert old.age_at(NOW - 10 * TTL) == pytest.approx(20.0)


async def test_invalid_values_are_refused_per_event_and_per_user(store: Repository) -> None:
    """A broken estimate or verified age is that event's alone: the user's other events and other users go on."""
    bad = [
        Evidence("nan", NOW, math.nan, 2.0),
        Evidence("neg", NOW, -3.0, 2.0),
        Evidence("old", NOW, 131.0, 2.0),
        Evidence("sure", NOW, 20.0, 0.01),
        Evidence("inf", NOW, 20.0, math.inf),
        Evidence("t", math.nan, 20.0, 2.0),
    ]
    r = await store.apply(
        {"ursula": [*bad, Evidence("ok", NOW, 20.0, 2.0)], "victor": [Evidence("v", NOW, 30.0, 2.0)]},
        now=NOW,
        model_version="m",
        floor=FLOOR,
    )
    assert [(x.event_id, x.reason) for x in r.refused["ursula"]] == [(e.event_id, RefusalReason.INVALID) for e in bad]
    assert r.applied == {"ursula": ("ok",), "victor": ("v",)}
    assert r["ursula"].observations == 1
    assert r.errors == {}
    for age, at in [(math.nan, NOW), (131.0, NOW), (-1.0, NOW), (20.0, math.inf)]:
        with pytest.raises(VerifiedAgeRefused) as refused:
            await store.apply_verified("ursula", event_id=f"v{age}{at}", verified_age=age, verified_at=at, now=NOW)
        assert refused.value.reason == "verified_age_invalid"
    assert (await store.get_many(["ursula"], now=NOW))["ursula"] == r["ursula"]


async def test_previous_actions_round_trip(store: Repository) -> None:
    key, other = SurfaceKey("ivy", "GB", "adult_content"), SurfaceKey("ivy", "DEFAULT", "adult_content")
    assert await store.get_previous_actions([key]) == {key: None}
    await store.record_actions({key: Action.RESTRICT})
    assert await store.get_previous_actions([key, other]) == {key: Action.RESTRICT, other: None}
    r = await store.apply({"ivy": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert r.previous_actions["ivy"] == {"GB/adult_content": Action.RESTRICT}
    await store.record_actions({key: Action.ALLOW, other: Action.BLOCK})
    assert await store.get_previous_actions([key, other]) == {key: Action.ALLOW, other: Action.BLOCK}
    refused = await store.apply(
        {"ivy": [Evidence("f", NOW + DAY, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR
    )  # nothing applied: the actions come back all the same
    assert refused.previous_actions["ivy"] == {"GB/adult_content": Action.ALLOW, "DEFAULT/adult_content": Action.BLOCK}
    assert (await store.get_many(["ivy"], now=NOW))["ivy"] == r["ivy"]  # actions never touch the belief
    # A user with hysteresis state but no belief yet has no belief.
    jo = SurfaceKey("jo", "GB", "adult_content")
    await store.record_actions({jo: Action.BLOCK})
    assert (await store.get_many(["jo"], now=NOW))["jo"] is None
    first = await store.apply({"jo": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert first["jo"].observations == 1
    assert first.previous_actions["jo"] == {"GB/adult_content": Action.BLOCK}
    assert (await store.apply({"kai": []}, now=NOW, model_version="m", floor=FLOOR)).previous_actions["kai"] == {}


async def test_delete_erases_belief_actions_and_remembered_ids(store: Repository) -> None:
    key = SurfaceKey("lee", "GB", "adult_content")
    await store.apply(
        {"lee": [Evidence("a", NOW, 20.0, 2.0)], "max": [Evidence("a", NOW, 30.0, 2.0)]},
        now=NOW,
        model_version="m",
        floor=FLOOR,
    )
    await store.record_actions({key: Action.BLOCK})
    await store.delete(["lee", "never-seen"])
    read = await store.get_many(["lee", "max"], now=NOW)
    assert read["lee"] is None
    assert read["max"] is not None  # only the named users go
    assert await store.get_previous_actions([key]) == {key: None}
    again = await store.apply({"lee": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert again.applied["lee"] == ("a",)  # a deleted user's event ids are forgotten too
    assert again["lee"].observations == 1


async def test_worked_example_signup_three_uploads_verified_age(store: Repository) -> None:
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
            d = decide(
                belief,
                PolicyEvent("DEFAULT", key.surface, t, declared, prev[key]),
                policy,
                half_life_s=store.half_life_s,
            )
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
        (
            "up1",
            NOW + 1 * DAY,
            14.0,
            14.0,
            frame_std,
            {
                "messaging_unknown_adults": (RV, ("insufficient_evidence",)),
                "adult_content": (BLOCK, ("estimated_under_age",)),
            },
        ),
        (
            "up2",
            NOW + 2 * DAY,
            13.5,
            13.75,
            math.sqrt(2.0 + floor**2),
            {
                "messaging_unknown_adults": (RV, ("uncertain", contradicted)),
                "adult_content": (BLOCK, ("estimated_under_age", contradicted)),
            },
        ),
        (
            "up3",
            NOW + 3 * DAY,
            14.2,
            13.9,
            math.sqrt(4.0 / 3 + floor**2),
            {
                "messaging_unknown_adults": (RV, ("uncertain", contradicted)),
                "adult_content": (BLOCK, ("estimated_under_age", contradicted)),
            },
        ),
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
    v = await store.apply_verified(
        user, event_id="id-check", verified_age=17.0, verified_at=NOW + 10 * DAY, now=NOW + 10 * DAY
    )
    assert v.verified
    assert v.age_at(NOW + 10 * DAY) == pytest.approx(17.0)
    assert await decide_all(NOW + 10 * DAY) == {
        "messaging_unknown_adults": (ALLOW, ("verified_age",)),
        "adult_content": (BLOCK, ("verified_under_age",)),
    }
    # A later upload that looks 25 changes nothing: the verified belief ignores estimates.
    r = await store.apply(
        {user: [Evidence("up4", NOW + 11 * DAY, 25.0, 2.0)]}, now=NOW + 11 * DAY, model_version="m1", floor=FLOOR
    )
    assert r.ignored[user] == ("up4",)
    assert r[user] == v


async def test_any_user_id_works_and_users_never_collide(store: Repository) -> None:
    users = {u: i for i, u in enumerate(ODD_IDS)}
    first = {u: [Evidence(f"a{i}", NOW - DAY, 10.0 + i, 2.0)] for u, i in users.items()}
    second = {u: [Evidence(f"b{i}", NOW, 11.0 + i, 3.0)] for u, i in users.items()}
    r1 = await store.apply(first, now=NOW, model_version="m", floor=FLOOR)
    assert r1.errors == {}
    assert {u: r1.applied[u] for u in users} == {u: (f"a{i}",) for u, i in users.items()}
    r2 = await store.apply(second, now=NOW, model_version="m", floor=FLOOR)
    assert r2.errors == {}
    for u in users:  # a collision would fuse another user's evidence in: counts and ages would differ
        expected = fuse(
            None, [*first[u], *second[u]], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=FLOOR
        ).belief
        same(r2[u], expected)
        assert r2[u].observations == 2
    surface = {u: SurfaceKey(u, "GB", f"s{i}") for u, i in users.items()}
    await store.record_actions({k: Action.RESTRICT for k in surface.values()})
    prev = await store.get_previous_actions(list(surface.values()))
    assert set(prev.values()) == {Action.RESTRICT}
    r3 = await store.apply({u: [] for u in users}, now=NOW, model_version="m", floor=FLOOR)
    assert {u: r3.previous_actions[u] for u in users} == {u: {f"GB/s{i}": Action.RESTRICT} for u, i in users.items()}
    v = await store.apply_verified("", event_id="v", verified_age=30.0, verified_at=NOW, now=NOW)
    assert v.verified
    read = await store.get_many(list(users), now=NOW)
    assert read[""] == v
    assert all(b is not None and b.observations == 2 and not b.verified for u, b in read.items() if u != "")
    await store.delete(list(users))
    assert set((await store.get_many(list(users), now=NOW)).values()) == {None}


async def test_a_corrupt_user_fails_alone(backend: Backend) -> None:
    """A value the store never writes in one user's belief: that user's update fails, typed, with no user id
    in it; the other users of the batch are unaffected, and reads see the corrupt user as absent."""
    store = backend.store
    await backend.corrupt("poisoned-user")
    batch = {u: [Evidence(f"e-{u}", NOW, 20.0, 2.0)] for u in ("before", "poisoned-user", "after")}
    result = await store.apply(batch, now=NOW, model_version="m", floor=FLOOR)
    assert set(result.errors) == {"poisoned-user"}
    error = result.errors["poisoned-user"]
    assert isinstance(error, BeliefUpdateFailed)
    assert error.reason == "belief_update_failed"
    assert "poisoned-user" not in error.detail
    assert "poisoned-user" not in result
    assert "poisoned-user" not in result.applied
    assert result.applied["before"] == ("e-before",)
    assert result.applied["after"] == ("e-after",)
    with pytest.raises(BeliefUpdateFailed):
        await store.apply_verified("poisoned-user", event_id="v", verified_age=20.0, verified_at=NOW, now=NOW)
    # Reads batched with other users (a verified age's prior, hysteresis state) read it as absent.
    read = await store.get_many(["before", "poisoned-user"], now=NOW)
    assert read["poisoned-user"] is None
    assert read["before"] == result["before"]
    keys = [SurfaceKey(u, "GB", "adult_content") for u in ("before", "poisoned-user")]
    await store.record_actions({keys[0]: Action.RESTRICT, keys[1]: Action.BLOCK})  # the poisoned one is skipped
    assert await store.get_previous_actions(keys) == {keys[0]: Action.RESTRICT, keys[1]: None}
    # Nothing was half applied: once the user is erased, their event applies as new.
    await store.delete(["poisoned-user"])
    again = await store.apply({"poisoned-user": batch["poisoned-user"]}, now=NOW, model_version="m", floor=FLOOR)
    assert again.applied["poisoned-user"] == ("e-poisoned-user",)
    assert again["poisoned-user"].observations == 1


async def test_the_event_id_log_keeps_the_newest_5000_per_user(store: Repository) -> None:
    """A user with very many events cannot grow their id log without bound (one id per event)."""
    evs = [Evidence(f"ev{i:05d}", NOW - 5005 + i, 20.0, 2.0) for i in range(5005)]
    result = await store.apply({"prolific": evs}, now=NOW, model_version="m", floor=FLOOR)
    assert len(result.applied["prolific"]) == 5005
    again = await store.apply({"prolific": [evs[-1], evs[0]]}, now=NOW, model_version="m", floor=FLOOR)
    assert again.duplicates["prolific"] == ("ev05004",)  # the newest are remembered
    assert again.applied["prolific"] == ("ev00000",)  # the oldest were forgotten (and count again)
    # Ids of the same time: the greatest (by their bytes, as Redis ranks equal scores) are kept.
    same_time = [Evidence(f"id{i:05d}", NOW, 20.0, 2.0) for i in random.Random(7).sample(range(5003), 5003)]
    await store.apply({"burst": same_time}, now=NOW, model_version="m", floor=FLOOR)
    redelivered = [Evidence(f"id{i:05d}", NOW, 20.0, 2.0) for i in (5002, 3, 2, 0)]
    again = await store.apply({"burst": redelivered}, now=NOW, model_version="m", floor=FLOOR)
    assert again.duplicates["burst"] == ("id05002", "id00003")
    assert again.applied["burst"] == ("id00002", "id00000")


async def test_event_ids_are_remembered_for_the_skew_window_only(store: Repository) -> None:
    """Past `max_past_s` an id is forgotten: estimates that old are refused anyway, and a verified age
    (remembered at its processing time, never refused for age) counts again."""
    past = store.skew.max_past_s
    await store.apply_verified("rita", event_id="v", verified_age=30.0, verified_at=NOW, now=NOW)
    within = await store.apply_verified("rita", event_id="v", verified_age=30.0, verified_at=NOW, now=NOW + past)
    assert within.observations == 1
    beyond = await store.apply_verified("rita", event_id="v", verified_age=30.0, verified_at=NOW, now=NOW + past + 1)
    assert beyond.observations == 2
    r = await store.apply(
        {"rita": [Evidence("e", NOW + past + 1, 20.0, 2.0)]}, now=NOW + past + 1, model_version="m", floor=FLOOR
    )
    assert r.ignored["rita"] == ("e",)
    edge = await store.apply(
        {"rita": [Evidence("e", NOW + past + 1, 20.0, 2.0)]}, now=NOW + 2 * past + 1, model_version="m", floor=FLOOR
    )
    assert edge.duplicates["rita"] == ("e",)  # exactly `max_past_s` old: still remembered, still accepted
    late = await store.apply(
        {"rita": [Evidence("e", NOW + past + 1, 20.0, 2.0)]}, now=NOW + 2 * past + 2, model_version="m", floor=FLOOR
    )
    assert [(x.event_id, x.reason) for x in late.refused["rita"]] == [("e", RefusalReason.TOO_OLD)]
    # An estimate's id is remembered by its event time, not by when it arrived.
    old = Evidence("o", NOW - past + 1, 20.0, 2.0)
    assert (await store.apply({"sid": [old]}, now=NOW, model_version="m", floor=FLOOR)).applied["sid"] == ("o",)
    again = await store.apply({"sid": [old]}, now=NOW + 2, model_version="m", floor=FLOOR)
    assert [(x.event_id, x.reason) for x in again.refused["sid"]] == [("o", RefusalReason.TOO_OLD)]


async def test_a_user_is_forgotten_ttl_after_the_last_accepted_evidence(backend: Backend) -> None:
    """Retention (data minimisation): belief, hysteresis state and event ids go `ttl_s` after the last
    accepted evidence, by the store's clock, whatever event times say. Redis's clock must really run."""
    ttl = 1.5
    store = backend.handle(ttl_s=ttl, skew=ClockSkewRule())  # the default skew window would follow ttl_s
    key = SurfaceKey("nina", "GB", "adult_content")
    r = await store.apply({"nina": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert r.applied["nina"] == ("a",)
    await store.record_actions({key: Action.BLOCK})  # never extends the belief's retention
    assert (await store.get_many(["nina"], now=NOW + TTL))["nina"] is not None  # event time is not the clock
    backend.advance(ttl)
    deadline = time.monotonic() + 10 * ttl
    while (await store.get_many(["nina"], now=NOW))["nina"] is not None:  # Redis expires a key in its own time
        assert time.monotonic() < deadline, "the belief outlived its TTL"
        await asyncio.sleep(0.05)
    assert await store.get_previous_actions([key]) == {key: None}
    again = await store.apply({"nina": [Evidence("a", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert again.applied["nina"] == ("a",)
    assert again.previous_actions["nina"] == {}


async def test_a_string_that_is_not_utf8_fails_the_whole_call_and_stores_nothing(store: Repository) -> None:
    """What the Redis client does with an argument it cannot encode (a lone surrogate): UnicodeEncodeError
    before anything is sent, for every user of the call. Unreachable from Kafka (Avro strings are UTF-8)."""
    bad = "\udc80"
    with pytest.raises(UnicodeEncodeError):
        await store.apply(
            {"ok": [Evidence("fine", NOW, 20.0, 2.0)], "odd": [Evidence(bad, NOW, 20.0, 2.0)]},
            now=NOW,
            model_version="m",
            floor=FLOOR,
        )
    with pytest.raises(UnicodeEncodeError):
        await store.apply({"ok": [Evidence("fine", NOW, 20.0, 2.0)]}, now=NOW, model_version=bad, floor=FLOOR)
    with pytest.raises(UnicodeEncodeError):
        await store.apply_verified("ok", event_id=bad, verified_age=20.0, verified_at=NOW, now=NOW)
    good, odd = SurfaceKey("ok", "GB", "adult_content"), SurfaceKey("ok", bad, "adult_content")
    with pytest.raises(UnicodeEncodeError):
        await store.record_actions({good: Action.BLOCK, odd: Action.BLOCK})
    with pytest.raises(UnicodeEncodeError):
        await store.get_previous_actions([good, odd])
    assert (await store.get_many(["ok"], now=NOW))["ok"] is None
    assert await store.get_previous_actions([good]) == {good: None}
    r = await store.apply({"ok": [Evidence("fine", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=FLOOR)
    assert r.applied["ok"] == ("fine",)
