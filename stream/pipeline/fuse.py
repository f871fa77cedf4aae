"""Step 4, fuse: the belief update for a batch of events, one pipelined Redis round trip per user depth.

A user's events in one batch go in successive rounds (the k-th event of a user in round k), so each
event's decision sees the belief after exactly the events before it. Hysteresis state (the last
action per user and surface) is read in the same round trip as the update; actions decided earlier
in the same batch are overlaid on what Redis returned (they are written once, after the batch, by
`record_actions`), so a user's second event in a batch sees the action decided for the first.

Redis faults are retried with bounded exponential backoff and jitter, forever: nothing is skipped,
and the driver's in-flight limit pauses consumption meanwhile.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import wait_exponential_jitter

from stream import metrics
from stream.core.belief import Belief, Evidence
from stream.core.belief_updates import SurfaceKey
from stream.core.policy import Action
from stream.errors import InvalidEvent
from stream.log import get_logger
from stream.pipeline.ports import BeliefRepository, Clock
from stream.pipeline.retry import until_available

log = get_logger("agegate.pipeline")
T = TypeVar("T")


@dataclass(slots=True)
class BeliefRequest:
    """One event's belief update: its evidence (or verified age) and where its hysteresis state lives."""

    user_id: str
    evidences: list[Evidence]
    surface_key: SurfaceKey
    verified: tuple[str, float, float] | None = None  # (event_id, age, verified_at)


@dataclass(slots=True)
class Fused:
    """The belief after the event, the last action for its surface before it, and how many of its
    evidences were refused (clock skew)."""

    belief: Belief | None
    previous: Action | None
    refused: int = 0


@dataclass(slots=True)
class _Round:
    requests: list[tuple[int, BeliefRequest]] = field(default_factory=list)


class RecentBeliefs:
    """Users this process recently stored a belief for (bounded, least recently used dropped first).

    A belief Redis no longer has for one of them was lost (FLUSHALL, a failover without persistence,
    an operator's DEL), not never made: the user is judged as new, so the loss must be seen.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._users: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def add(self, user_id: str) -> None:
        self._users[user_id] = None
        self._users.move_to_end(user_id)
        if len(self._users) > self.capacity:
            self._users.popitem(last=False)


def rounds_by_depth(requests: Sequence[BeliefRequest]) -> list[list[tuple[int, BeliefRequest]]]:
    """Round k holds every user's k-th request (with its index in `requests`), in input order."""
    rounds: list[list[tuple[int, BeliefRequest]]] = []
    depth: dict[str, int] = defaultdict(int)
    for i, request in enumerate(requests):
        k = depth[request.user_id]
        depth[request.user_id] += 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append((i, request))
    return rounds


class BeliefStage:
    """Applies a batch's belief updates and answers one `Fused` (or the event's error) per request."""

    def __init__(self, store: BeliefRepository, *, clock: Clock, model_version: str, error_floor: float) -> None:
        """`error_floor`: the least floor of `model_version` (`ErrorFloor.minimum`); each evidence carries its own."""
        self.store = store
        self._clock = clock
        self.model_version = model_version
        self.error_floor = error_floor
        self._retry_wait = wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.2)
        self.recent = RecentBeliefs()

    async def fuse_round(
        self, round_: Sequence[tuple[int, BeliefRequest]], decided: Mapping[SurfaceKey, Action]
    ) -> dict[int, Fused | InvalidEvent]:
        """One round (no user twice), retried while Redis is unreachable; `decided` holds the actions
        already decided in this batch but not yet written (they win over what Redis returns)."""
        out = await self.retrying(functools.partial(self._apply_round, round_))
        for i, request in round_:
            fused = out.get(i)
            if isinstance(fused, Fused) and request.surface_key in decided:
                fused.previous = decided[request.surface_key]
        return out

    async def record_actions(self, actions: Mapping[SurfaceKey, Action]) -> None:
        """Store the batch's hysteresis state (last action per user and surface), one round trip."""
        if actions:
            await self.retrying(functools.partial(self.store.record_actions, actions))

    async def retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await until_available(fn, dependency="redis", wait=self._retry_wait)

    async def _apply_round(self, round_: Sequence[tuple[int, BeliefRequest]]) -> dict[int, Fused | InvalidEvent]:
        now = self._clock()
        started = time.perf_counter()
        out: dict[int, Fused | InvalidEvent] = {}
        verified = [(i, r) for i, r in round_ if r.verified is not None]
        estimated = [(i, r) for i, r in round_ if r.verified is None]
        existed: dict[str, bool] = {}  # whether the user had a belief before this round
        beliefs: dict[str, Belief | None] = {}
        # Online accuracy: what the estimated belief said when the verified age arrived.
        priors = await self.store.get_many([r.user_id for _, r in verified], now=now) if verified else {}
        for i, r in verified:
            assert r.verified is not None
            event_id, age, at = r.verified
            try:
                beliefs[r.user_id] = await self.store.apply_verified(
                    r.user_id, event_id=event_id, verified_age=age, verified_at=at, now=now
                )
            except InvalidEvent as exc:
                out[i] = exc
        if estimated:
            result = await self.store.apply(
                {r.user_id: r.evidences for _, r in estimated},
                now=now,
                model_version=self.model_version,
                floor=self.error_floor,
            )
            for i, r in estimated:
                if r.user_id in result.errors:  # this user's data only: its event is dead-lettered
                    out[i] = result.errors[r.user_id]
                    continue
                belief = beliefs[r.user_id] = result.get(r.user_id)
                applied_now = len(result.applied.get(r.user_id, ()))
                existed[r.user_id] = belief is not None and belief.observations > applied_now
                # previous_actions is keyed "jurisdiction/surface"
                previous = result.previous_actions.get(r.user_id, {}).get(r.surface_key.field.removeprefix("a:"))
                out[i] = Fused(belief, previous, len(result.refused.get(r.user_id, ())))
        prev_actions = await self.store.get_previous_actions([r.surface_key for _, r in verified]) if verified else {}
        metrics.BELIEF_UPDATE_SECONDS.observe(time.perf_counter() - started)
        for i, r in verified:
            existed[r.user_id] = priors.get(r.user_id) is not None
            if i in out:
                continue
            prior = priors.get(r.user_id)
            if r.verified is not None and prior is not None and not prior.verified:
                _, age, at = r.verified  # observed once the round succeeded, so a retried round counts once
                metrics.ONLINE_ABS_ERROR_YEARS.observe(abs(prior.age_at(at) - age))
            out[i] = Fused(beliefs.get(r.user_id), prev_actions.get(r.surface_key))
        self._notice_lost(existed, beliefs)
        return out

    def _notice_lost(self, existed: Mapping[str, bool], beliefs: Mapping[str, Belief | None]) -> None:
        lost = [u for u, was in existed.items() if not was and u in self.recent]
        if lost:
            metrics.BELIEFS_LOST.inc(len(lost))
            log.error(
                "beliefs this worker stored are gone from redis; those users are judged as new "
                "(check for FLUSHALL, a failover without persistence, or eviction)",
                users=len(lost),
            )
        for u, belief in beliefs.items():
            if belief is not None:
                self.recent.add(u)
