"""The in-memory belief store's retention and fault hooks, on a fake clock (no waiting).

Its behaviour shared with Redis is the contract in tests/contract/test_belief_repository.py; what
Redis shows only through PTTL (a TTL refreshed by accepted evidence alone, hysteresis state never
extending retention) is checked here, where the clock can be moved exactly.
"""

from __future__ import annotations

import pytest

from stream.adapters.memory_beliefs import InMemoryBeliefStore
from stream.core.belief import Evidence
from stream.core.belief_updates import SurfaceKey
from stream.core.policy import Action
from stream.errors import DependencyUnavailable

NOW = 1_750_000_000.0
TTL = 100.0
KEY = SurfaceKey("ann", "GB", "adult_content")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make() -> tuple[InMemoryBeliefStore, Clock]:
    clock = Clock()
    return InMemoryBeliefStore(half_life_s=365 * 86400.0, ttl_s=TTL, clock=clock), clock


async def present(store: InMemoryBeliefStore, user: str = "ann") -> bool:
    return (await store.get_many([user], now=NOW))[user] is not None


async def apply(store: InMemoryBeliefStore, *evs: Evidence) -> None:
    await store.apply({"ann": list(evs)}, now=NOW, model_version="m", floor=1.0)


async def test_accepted_evidence_refreshes_retention_and_nothing_else_does() -> None:
    store, clock = make()
    await apply(store, Evidence("a", NOW, 20.0, 2.0))
    clock.t = TTL - 1
    assert await present(store)
    await apply(store, Evidence("a", NOW, 20.0, 2.0), Evidence("f", NOW + 3600, 20.0, 2.0))  # duplicate, refused
    await store.record_actions({KEY: Action.BLOCK})
    await store.get_many(["ann"], now=NOW + 10 * TTL)  # event time is not the retention clock
    clock.t = TTL
    assert not await present(store)
    assert await store.get_previous_actions([KEY]) == {KEY: None}
    await apply(store, Evidence("a", NOW, 20.0, 2.0))  # its id went with it: applied anew
    clock.t = 2 * TTL - 1
    await apply(store, Evidence("b", NOW, 20.0, 2.0))
    clock.t = 3 * TTL - 2
    assert (await store.get_many(["ann"], now=NOW))["ann"].observations == 2  # type: ignore[union-attr]
    clock.t = 3 * TTL - 1
    assert not await present(store)


async def test_hysteresis_state_alone_gets_a_ttl_and_never_extends_one() -> None:
    store, clock = make()
    other = SurfaceKey("bo", "GB", "adult_content")
    await store.record_actions({other: Action.RESTRICT})
    clock.t = TTL / 2
    await store.record_actions({other: Action.ALLOW})
    assert await store.get_previous_actions([other]) == {other: Action.ALLOW}
    clock.t = TTL
    assert await store.get_previous_actions([other]) == {other: None}
    # A verified age refreshes like an accepted estimate.
    await store.apply_verified("bo", event_id="v", verified_age=20.0, verified_at=NOW, now=NOW)
    clock.t = 2 * TTL - 1
    assert await present(store, "bo")
    clock.t = 2 * TTL
    assert not await present(store, "bo")


async def test_an_outage_fails_every_call_and_loses_nothing() -> None:
    store, _ = make()
    await apply(store, Evidence("a", NOW, 20.0, 2.0))
    store.unavailable = True
    calls = [
        apply(store, Evidence("b", NOW, 20.0, 2.0)),
        store.apply_verified("ann", event_id="v", verified_age=20.0, verified_at=NOW, now=NOW),
        store.record_actions({KEY: Action.BLOCK}),
        store.get_many(["ann"], now=NOW),
        store.get_previous_actions([KEY]),
        store.delete(["ann"]),
    ]
    for call in calls:
        with pytest.raises(DependencyUnavailable):
            await call
    assert await store.apply({}, now=NOW, model_version="m", floor=1.0) == {}  # nothing to send: no failure
    store.unavailable = False
    r = await store.apply({"ann": [Evidence("b", NOW, 20.0, 2.0)]}, now=NOW, model_version="m", floor=1.0)
    assert r["ann"].observations == 2
    assert await store.get_previous_actions([KEY]) == {KEY: None}


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        InMemoryBeliefStore(half_life_s=0.0, ttl_s=1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        InMemoryBeliefStore(half_life_s=1.0, ttl_s=-1.0)
