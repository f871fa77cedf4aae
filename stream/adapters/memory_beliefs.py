"""An in-memory belief repository: the contract of the Redis `BeliefStore`, without Redis.

Why: the pipeline and the replay need fast unit tests, and a fake that drifts from Redis would make
them lie. So this store has BeliefStore's public methods and semantics, and one contract suite
(tests/contract/test_belief_repository.py) runs against both. The fusion is stream/core/belief.py's
(`fuse`, `apply_verified`, `decay`), the same math stream/adapters/belief.lua mirrors; what the Lua script adds
around it is reproduced here:
- idempotency per event id: ids remembered with their event time (processing time for verified
  ages), forgotten once older than the skew window (`max_past_s`), at most MAX_EVENT_IDS per user
  (the newest kept, ties broken by the id's bytes, as a Redis sorted set ranks them);
- clock-skew refusal and per-event outcomes (applied, duplicate, ignored, refused) in input order;
- per-surface previous actions kept beside the belief and returned with every update;
- retention: a user's belief and event ids expire `ttl_s` after the last accepted evidence; hysteresis
  state written for a user with nothing stored gets a TTL, and never extends an existing one. Like
  Redis, expiry follows the store's own clock (injected: `clock`), not the event-time `now` callers
  pass to updates and reads.

Each method runs without awaiting anything, so one call is atomic as one Lua script is. Two hooks
stand in for Redis faults in tests: `corrupt(user_id)` puts a foreign value in a user's belief (that
user's updates fail with BeliefUpdateFailed, reads see nothing, the other users are unaffected), and
`unavailable = True` makes every call raise DependencyUnavailable (an outage). Like the Redis store,
a call given a string that is not valid UTF-8 (an event id holding a lone surrogate, say) raises
UnicodeEncodeError and changes nothing; the codec never produces one (Avro strings are UTF-8).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from stream.adapters.belief_store import BeliefStoreError
from stream.core.belief import (
    Belief,
    ClockSkewRule,
    Evidence,
    apply_verified,
    decay,
    fuse,
    is_valid,
    verified_refusal,
)
from stream.core.belief_updates import ApplyResult, BeliefUpdateFailed, SurfaceKey, VerifiedAgeRefused
from stream.core.policy import Action
from stream.errors import DependencyUnavailable
from stream.log import get_logger

# As in stream/adapters/belief.lua: the newest ids per user that deduplication remembers.
MAX_EVENT_IDS = 5000

log = get_logger("agegate.memory_beliefs")


@dataclass(slots=True)
class _BeliefHash:
    """What Redis keeps in a user's `b` hash: the belief and the last action per surface field."""

    belief: Belief | None = None
    actions: dict[str, Action] = field(default_factory=dict)  # "a:<jurisdiction>/<surface>@<policy version>" -> action
    expires_at: float | None = None  # None: no TTL (never the case for what this store writes)
    foreign: bool = False  # a value this store never writes there (see `corrupt`)


@dataclass(slots=True)
class _EventIds:
    """A user's `e` sorted set: event id -> score (event time, or processing time for verified ages)."""

    scores: dict[str, float] = field(default_factory=dict)
    expires_at: float | None = None


class InMemoryBeliefStore:
    def __init__(
        self,
        *,
        half_life_s: float,
        ttl_s: float,
        skew: ClockSkewRule | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if half_life_s <= 0 or ttl_s <= 0:
            raise ValueError("half_life_s and ttl_s must be > 0")
        self.half_life_s = half_life_s
        self.ttl_s = ttl_s
        self.skew = skew if skew is not None else ClockSkewRule(max_past_s=ttl_s)
        self.unavailable = False
        self._clock = clock
        self._beliefs: dict[str, _BeliefHash] = {}
        self._events: dict[str, _EventIds] = {}

    # --- writes ----------------------------------------------------------------------------------

    async def apply(
        self, updates: Mapping[str, Sequence[Evidence]], *, now: float, model_version: str, floor: float
    ) -> ApplyResult:
        """Fuse a micro-batch of evidence for many users; outcomes per event as BeliefStore reports them."""
        result = ApplyResult()
        if not updates:
            return result
        self._check_up()
        _encodable(model_version, *(ev.event_id for evs in updates.values() for ev in evs))
        for user_id, evidences in updates.items():
            seen = self._trimmed_ids(user_id, now)
            stored = self._hash(user_id)
            if stored is not None and stored.foreign:
                result.errors[user_id] = _foreign_value()
                continue
            prior = stored.belief if stored is not None else None
            fused = fuse(
                prior,
                evidences,
                now=now,
                half_life_s=self.half_life_s,
                model_version=model_version,
                floor=floor,
                seen=seen.scores,
                skew=self.skew,
            )
            accepted = {*fused.applied, *fused.ignored}
            if accepted:
                for ev in evidences:  # the accepted occurrence of each id (an earlier one may be refused)
                    if ev.event_id in accepted and ev.event_id not in seen.scores and self._acceptable(ev, now):
                        seen.scores[ev.event_id] = ev.observed_at
                stored = stored if stored is not None else self._beliefs.setdefault(user_id, _BeliefHash())
                stored.belief = fused.belief
                self._written(user_id, stored, seen)
            if fused.belief is not None:
                result[user_id] = fused.belief
            result.previous_actions[user_id] = _previous(stored)
            result.applied[user_id] = fused.applied
            result.duplicates[user_id] = fused.duplicates
            result.ignored[user_id] = fused.ignored
            result.refused[user_id] = fused.refused
        return result

    async def apply_verified(
        self, user_id: str, *, event_id: str, verified_age: float, verified_at: float, now: float
    ) -> Belief:
        """Replace the user's belief by a verified age; a redelivered event id changes nothing.

        Raises VerifiedAgeRefused for an invalid age or one dated beyond the future tolerance,
        BeliefUpdateFailed when the user's stored value is foreign (as Redis refuses the script).
        """
        self._check_up()
        _encodable(event_id)
        seen = self._trimmed_ids(user_id, now)
        stored = self._hash(user_id)
        if stored is not None and stored.foreign:
            raise _foreign_value()
        prior = stored.belief if stored is not None else None
        if event_id in seen.scores:
            if prior is None:  # pragma: no cover - ids and belief are written and expire together
                raise BeliefStoreError("verified age left no belief")
            return prior
        refusal = verified_refusal(event_id, verified_age, verified_at, now, self.skew)
        if refusal is not None:
            reason = refusal.reason.value
            raise VerifiedAgeRefused(f"verified age refused: {reason}", reason=f"verified_age_{reason}")
        belief = apply_verified(prior, verified_age=verified_age, verified_at=verified_at, now=now)
        seen.scores[event_id] = now
        stored = stored if stored is not None else self._beliefs.setdefault(user_id, _BeliefHash())
        stored.belief = belief
        self._written(user_id, stored, seen)
        return belief

    async def record_actions(self, actions: Mapping[SurfaceKey, Action]) -> None:
        """Remember the last action per user and surface; a TTL only where the user has none yet."""
        if not actions:
            return
        self._check_up()
        _encodable(*(key.field for key in actions))
        for key, action in actions.items():
            stored = self._hash(key.user_id)
            if stored is not None and stored.foreign:
                log.warning("belief key refused by redis: read as absent, write skipped", error="WRONGTYPE")
                continue
            if stored is None:
                stored = self._beliefs[key.user_id] = _BeliefHash()
            stored.actions[key.field] = action
            if stored.expires_at is None:
                stored.expires_at = self._clock() + self.ttl_s

    # --- reads -----------------------------------------------------------------------------------

    async def get_many(self, user_ids: Sequence[str], *, now: float) -> dict[str, Belief | None]:
        """Beliefs as seen at `now`: precision decayed (verified ones do not decay)."""
        if not user_ids:
            return {}
        self._check_up()
        out: dict[str, Belief | None] = {}
        for user_id in user_ids:
            stored = self._hash(user_id)
            belief = stored.belief if stored is not None and not stored.foreign else None
            out[user_id] = decay(belief, now, self.half_life_s) if belief is not None else None
        return out

    async def get_previous_actions(self, keys: Sequence[SurfaceKey]) -> dict[SurfaceKey, Action | None]:
        """The last action per user and surface; None where there is none or it is unreadable."""
        if not keys:
            return {}
        self._check_up()
        _encodable(*(key.field for key in keys))
        out: dict[SurfaceKey, Action | None] = {}
        for key in keys:
            stored = self._hash(key.user_id)
            out[key] = stored.actions.get(key.field) if stored is not None and not stored.foreign else None
        return out

    async def delete(self, user_ids: Sequence[str]) -> None:
        """Erase users (a deletion request): belief, hysteresis state and remembered event ids."""
        if not user_ids:
            return
        self._check_up()
        for user_id in user_ids:
            self._beliefs.pop(user_id, None)
            self._events.pop(user_id, None)

    # --- test hooks ------------------------------------------------------------------------------

    def corrupt(self, user_id: str) -> None:
        """Put a foreign value in the user's belief (as `SET <belief key> x` would in Redis), no TTL."""
        self._beliefs[user_id] = _BeliefHash(foreign=True)

    # --- internals -------------------------------------------------------------------------------

    def _check_up(self) -> None:
        if self.unavailable:
            raise DependencyUnavailable("in-memory belief store: marked unavailable")

    def _acceptable(self, ev: Evidence, now: float) -> bool:
        return (
            is_valid(ev)
            and ev.observed_at <= now + self.skew.future_tolerance_s
            and ev.observed_at >= now - self.skew.max_past_s
        )

    def _hash(self, user_id: str) -> _BeliefHash | None:
        stored = self._beliefs.get(user_id)
        if stored is not None and stored.expires_at is not None and self._clock() >= stored.expires_at:
            del self._beliefs[user_id]
            return None
        return stored

    def _trimmed_ids(self, user_id: str, now: float) -> _EventIds:
        """The user's remembered ids without those older than the skew window (they would be refused)."""
        ids = self._events.get(user_id)
        if ids is None or (ids.expires_at is not None and self._clock() >= ids.expires_at):
            self._events.pop(user_id, None)
            return _EventIds()
        oldest = now - self.skew.max_past_s
        ids.scores = {i: s for i, s in ids.scores.items() if s >= oldest}
        return ids

    def _written(self, user_id: str, stored: _BeliefHash, ids: _EventIds) -> None:
        """After accepted evidence: both structures live `ttl_s` more; the id log is capped."""
        expires_at = self._clock() + self.ttl_s
        stored.expires_at = expires_at
        if len(ids.scores) > MAX_EVENT_IDS:
            newest = heapq.nlargest(
                MAX_EVENT_IDS, ids.scores.items(), key=lambda kv: (kv[1], kv[0].encode("utf-8", "surrogatepass"))
            )
            ids.scores = dict(newest)
        ids.expires_at = expires_at
        self._events[user_id] = ids


def _previous(stored: _BeliefHash | None) -> dict[str, Action]:
    """Previous actions keyed "jurisdiction/surface", as BeliefStore returns them with an update."""
    if stored is None:
        return {}
    return {name.removeprefix("a:"): action for name, action in stored.actions.items()}


def _encodable(*texts: str) -> None:
    """Fail the whole call, before any change, on a string Redis could not be sent: redis-py encodes
    arguments as strict UTF-8 while packing the pipeline, so a lone surrogate in an event id, model
    version or surface name raises UnicodeEncodeError there and nothing reaches the server."""
    for text in texts:
        text.encode("utf-8")


def _foreign_value() -> BeliefUpdateFailed:
    return BeliefUpdateFailed("belief script failed: WRONGTYPE the user's belief holds a value of another type")
