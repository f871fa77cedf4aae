"""Per-user age beliefs in Redis, updated by one Lua script (stream/adapters/belief.lua) per user.

Keys of a user (built by `user_key`, the only place a user id becomes a key name):
- `{prefix}:{<tag>}:b` hash: the belief (B, P, t, n, v, mv) and the hysteresis state, one field
  `a:<jurisdiction>/<surface>@<policy version>` per surface holding the last action emitted there
  under that policy version (hysteresis never carries an action across versions);
- `{prefix}:{<tag>}:e` sorted set: event ids already applied, scored by event time and trimmed to
  the clock-skew window (older evidence is refused anyway, so forgetting its id is safe).
`<tag>` is `user_tag(user_id)`: the first 32 hex characters of the SHA-256 of the id's UTF-8 bytes
(`surrogatepass`, so any Python str maps to one tag). Why not the raw id: a Redis Cluster hashes only
the text between the first `{` and the next `}`, so an id that is empty, starts with `}` or holds
braces put the two keys in different slots (CROSSSLOT on the script); a hex digest never does, keeps
every key name 32 characters long whatever the id's size, and keeps raw user ids out of Redis key
names (data minimisation). 128 bits make a collision between two users practically impossible.
An operator finds a user's keys with `printf '%s' "$USER_ID" | sha256sum | cut -c1-32`.
Both expire `ttl_s` after the last accepted evidence (data minimisation).

The client is a plain `redis.asyncio.Redis` or a `redis.asyncio.RedisCluster` (AGEGATE_REDIS_CLUSTER):
every command names the keys of one user only, so the cluster client routes each to its slot.

A micro-batch is one pipelined round trip of EVALSHA calls, not a MULTI: each user's update is
atomic inside its script, and users are independent. Because updates are idempotent per event id, a
batch that failed half way (NOSCRIPT after a SCRIPT FLUSH or failover, a dropped connection) can
simply be sent again. A script error in one user's reply (a foreign value in that user's key, say) is
that user's alone: `ApplyResult.errors` carries it and the other users of the batch are unaffected.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_exc

from stream.core.belief import Belief, ClockSkewRule, Evidence, Refusal, RefusalReason
from stream.core.belief_updates import ApplyResult, BeliefUpdateFailed, SurfaceKey, VerifiedAgeRefused
from stream.core.policy import Action
from stream.errors import AgegateError, DependencyUnavailable
from stream.log import get_logger

LUA_SOURCE = importlib.resources.files("stream.adapters").joinpath("belief.lua").read_text()

_REFUSAL_CODES = {"X": RefusalReason.INVALID, "F": RefusalReason.FUTURE, "O": RefusalReason.TOO_OLD}

T = TypeVar("T")
R = TypeVar("R")
log = get_logger("agegate.belief_store")

RedisClient = aioredis.Redis | aioredis.RedisCluster
"""Either client: the store sends only single-user commands, which both route alike."""

# Replies that say the server (not this user's data) is in trouble: retried like an outage.
_SERVER_STATE_ERRORS = (
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    redis_exc.OutOfMemoryError,
    redis_exc.ReadOnlyError,
    redis_exc.ClusterDownError,
    redis_exc.TryAgainError,
    redis_exc.AskError,
)


def user_tag(user_id: str) -> str:
    """The hash tag of a user's keys: 32 hex characters of SHA-256 over the id's UTF-8 bytes."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def tag_key(prefix: str, tag: str, kind: str) -> str:
    return f"{prefix}:{{{tag}}}:{kind}"


def user_key(prefix: str, user_id: str, kind: str) -> str:
    """The key of one of a user's structures (`b` belief hash, `e` event-id set): same slot for all."""
    return tag_key(prefix, user_tag(user_id), kind)


class BeliefStoreError(AgegateError):
    """Redis answered, but not as the script promises (a bug or a foreign value in our keys)."""


@dataclass(slots=True)
class _Script:
    source: str
    sha: str = field(default="")


def _num(x: float) -> str:
    # repr is the shortest string that round-trips exactly; Lua's tonumber parses it back exactly.
    return repr(float(x))


class BeliefStore:
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        half_life_s: float,
        ttl_s: float,
        skew: ClockSkewRule | None = None,
    ) -> None:
        if half_life_s <= 0 or ttl_s <= 0:
            raise ValueError("half_life_s and ttl_s must be > 0")
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain '{' or '}': the user's hash tag must decide the slot")
        self._redis = redis
        self._prefix = prefix
        self.half_life_s = half_life_s
        self.ttl_s = ttl_s
        self.skew = skew if skew is not None else ClockSkewRule(max_past_s=ttl_s)
        self._script = _Script(LUA_SOURCE)
        self._ttl_ms = str(max(1, math.ceil(ttl_s * 1000)))

    def belief_key(self, user_id: str) -> str:
        return user_key(self._prefix, user_id, "b")

    def events_key(self, user_id: str) -> str:
        return user_key(self._prefix, user_id, "e")

    # --- writes ----------------------------------------------------------------------------------

    async def apply(
        self, updates: Mapping[str, Sequence[Evidence]], *, now: float, model_version: str, floor: float
    ) -> ApplyResult:
        """Fuse a micro-batch of evidence for many users in one pipelined round trip.

        `floor` is `model_version`'s least error floor (years); each evidence carries its own (see
        stream/core/belief.py `fuse`).
        """
        calls: list[tuple[str, list[str]]] = []
        for user_id, evidences in updates.items():
            args = self._common_args("e", now, model_version, floor)
            for ev in evidences:
                args += [ev.event_id, _num(ev.observed_at), _num(ev.mean_age), _num(ev.std_age), _num(ev.floor)]
            calls.append((user_id, args))
        replies = await self._eval_many(calls)
        result = ApplyResult()
        for (user_id, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, BeliefUpdateFailed):
                result.errors[user_id] = reply
                continue
            evidences = updates[user_id]
            codes, belief, actions = self._parse_reply(reply)
            if len(codes) != len(evidences):
                raise BeliefStoreError(f"script returned {len(codes)} codes for {len(evidences)} evidences")
            if belief is not None:
                result[user_id] = belief
            result.previous_actions[user_id] = actions
            pairs = list(zip(evidences, codes, strict=True))
            result.applied[user_id] = tuple(e.event_id for e, c in pairs if c == "A")
            result.duplicates[user_id] = tuple(e.event_id for e, c in pairs if c == "D")
            result.ignored[user_id] = tuple(e.event_id for e, c in pairs if c == "I")
            result.refused[user_id] = tuple(
                Refusal(e.event_id, _REFUSAL_CODES[c], e.observed_at) for e, c in pairs if c in _REFUSAL_CODES
            )
        return result

    async def apply_verified(
        self, user_id: str, *, event_id: str, verified_age: float, verified_at: float, now: float
    ) -> Belief:
        """Replace the user's belief by a verified age; a redelivered event id changes nothing.

        Raises VerifiedAgeRefused (dead-letter it) for a non-finite or out-of-range age or a
        verification dated beyond the future tolerance, BeliefUpdateFailed when Redis refuses the
        script for this user's keys.
        """
        args = [*self._common_args("v", now, "", 0.0), event_id, _num(verified_at), _num(verified_age)]
        (reply,) = await self._eval_many([(user_id, args)])
        if isinstance(reply, BeliefUpdateFailed):
            raise reply
        codes, belief, _ = self._parse_reply(reply)
        if codes in _REFUSAL_CODES:
            raise VerifiedAgeRefused(
                f"verified age refused: {_REFUSAL_CODES[codes].value}",
                reason=f"verified_age_{_REFUSAL_CODES[codes].value}",
            )
        if belief is None:  # pragma: no cover - the script always leaves a belief after 'A' or 'D'
            raise BeliefStoreError("verified age left no belief")
        return belief

    async def record_actions(self, actions: Mapping[SurfaceKey, Action]) -> None:
        """Remember the last action per user and surface (hysteresis state), one round trip.

        One script call per user (mode `a` of belief.lua) writes all of that user's actions and sets
        a TTL only if the key has none (a user with no belief yet), so this never extends retention
        beyond what the belief itself has. One call instead of an HSET and a PEXPIRE per surface:
        the client's cost is mostly per command. A key Redis refuses to write (a foreign type in one
        user's key) is skipped with a warning: that user's next update is dead-lettered anyway.
        """
        fields: dict[str, list[str]] = {}
        for key, action in actions.items():
            fields.setdefault(key.user_id, []).extend((key.field, action.value))
        calls = [(user_id, ["a", self._ttl_ms, *pairs]) for user_id, pairs in fields.items()]
        for reply in await self._eval_many(calls):
            if isinstance(reply, BeliefUpdateFailed):
                log.warning("belief key refused by redis: hysteresis state not written", error=str(reply)[:200])

    # --- reads -----------------------------------------------------------------------------------

    async def get_many(self, user_ids: Sequence[str], *, now: float) -> dict[str, Belief | None]:
        """Beliefs as seen at `now`: precision decayed (verified ones do not decay)."""
        from stream.core.belief import decay

        raw = await self._hgetall_many(user_ids)
        out: dict[str, Belief | None] = {}
        for user_id, fields in zip(user_ids, raw, strict=True):
            belief = _readable(_belief_from_hash, fields)
            out[user_id] = decay(belief, now, self.half_life_s) if belief is not None else None
        return out

    async def get_previous_actions(self, keys: Sequence[SurfaceKey]) -> dict[SurfaceKey, Action | None]:
        """The last action per user and surface; None where there is none or it is unreadable."""

        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(self.belief_key(key.user_id), key.field)
                return list(await pipe.execute(raise_on_error=False))

        values = _per_key_replies(await self._guard(run))
        return {k: _readable(lambda v: Action(_text(v)), v) for k, v in zip(keys, values, strict=True)}

    async def delete(self, user_ids: Sequence[str]) -> None:
        """Erase users (a deletion request); both keys, one DEL per user (one slot each), one round trip."""
        if not user_ids:
            return

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for u in user_ids:
                    pipe.delete(self.belief_key(u), self.events_key(u))
                await pipe.execute()

        await self._guard(run)

    # --- internals -------------------------------------------------------------------------------

    def _common_args(self, mode: str, now: float, model_version: str, floor: float) -> list[str]:
        return [
            mode,
            _num(now),
            _num(self.half_life_s),
            self._ttl_ms,
            _num(self.skew.future_tolerance_s),
            _num(self.skew.max_past_s),
            model_version,
            _num(floor),
        ]

    async def _hgetall_many(self, user_ids: Sequence[str]) -> list[dict[Any, Any]]:
        async def run() -> list[dict[Any, Any]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.hgetall(self.belief_key(user_id))
                return list(await pipe.execute(raise_on_error=False))

        return [r if r is not None else {} for r in _per_key_replies(await self._guard(run))]

    async def _eval_many(self, calls: Sequence[tuple[str, list[str]]]) -> list[Any]:
        """EVALSHA every call in one pipeline; on NOSCRIPT load the script and resend only those.

        redis-py's Script in a pipeline would add a SCRIPT EXISTS round trip to every batch; this
        costs nothing until the cache is actually empty. SCRIPT LOAD goes to every primary of a
        cluster. A reply is the script's result, or BeliefUpdateFailed when Redis refused the
        script for that call's keys; the server's own trouble raises DependencyUnavailable.
        """
        if not calls:
            return []
        if not self._script.sha:
            self._script.sha = await self._guard(lambda: self._redis.script_load(self._script.source))
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(3):
            sha = self._script.sha

            async def run(idx: list[int] = pending, sha: str = sha) -> list[Any]:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for i in idx:
                        user_id, args = calls[i]
                        # Not pipe.evalsha: redis-py blocks that method on cluster pipelines (it
                        # cannot know a script's keys share a slot); the generic command is routed by
                        # its declared keys, which share a slot by construction (user_key).
                        pipe.execute_command(
                            "EVALSHA", sha, 2, self.belief_key(user_id), self.events_key(user_id), *args
                        )
                    return list(await pipe.execute(raise_on_error=False))

            results = await self._guard(run)
            missing: list[int] = []
            for i, r in zip(pending, results, strict=True):
                if isinstance(r, redis_exc.NoScriptError):
                    missing.append(i)
                elif isinstance(r, _SERVER_STATE_ERRORS) or _server_busy(r):
                    raise DependencyUnavailable(f"redis: {r}") from r
                elif isinstance(r, redis_exc.NoPermissionError):  # our ACL, not this user's data
                    raise BeliefStoreError(f"belief script not permitted: {r}") from r
                elif isinstance(r, redis_exc.ResponseError):
                    failed = BeliefUpdateFailed(f"belief script failed: {str(r)[:300]}")
                    failed.__cause__ = r
                    replies[i] = failed
                elif isinstance(r, Exception):
                    raise BeliefStoreError(f"belief script failed: {r}") from r
                else:
                    replies[i] = r
            if not missing:
                return replies
            self._script.sha = await self._guard(lambda: self._redis.script_load(self._script.source))
            pending = missing
        raise DependencyUnavailable("redis keeps losing the belief script (NOSCRIPT three times)")

    async def _guard(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (*_SERVER_STATE_ERRORS, OSError) as exc:
            raise DependencyUnavailable(f"redis: {exc}") from exc
        except redis_exc.RedisClusterException as exc:
            # The cluster client wraps "no node reachable" and "slot not covered" in its own class;
            # its other uses are client-side misuse (a bug), which must not be retried forever.
            if isinstance(exc, redis_exc.SlotNotCoveredError) or isinstance(exc.__cause__, _SERVER_STATE_ERRORS):
                raise DependencyUnavailable(f"redis cluster: {exc}") from exc
            raise

    def _parse_reply(self, reply: Any) -> tuple[str, Belief | None, dict[str, Action]]:
        parts = [_text(p) for p in reply]
        if len(parts) < 11:
            raise BeliefStoreError(f"unexpected script reply {parts!r}")
        codes = parts[0]
        belief = None
        if parts[1] == "1":
            belief = Belief(
                birth_time=float(parts[2]),
                precision=float(parts[3]),
                updated_at=float(parts[4]),
                observations=int(parts[5]),
                verified=parts[6] == "1",
                model_version=parts[7],
                floor=float(parts[8]),
                floor_rms=float(parts[9]),
                floor_earlier=float(parts[10]),
            )
        actions = {parts[i][2:]: Action(parts[i + 1]) for i in range(11, len(parts) - 1, 2)}
        return codes, belief, actions


def _per_key_replies(replies: Sequence[Any]) -> list[Any]:
    """Replies of a read pipeline: the server's trouble raises; a key Redis refuses to read (a foreign
    type in one user's key) reads as absent (None), so one user's bad data never fails the others."""
    out = []
    for r in replies:
        if isinstance(r, _SERVER_STATE_ERRORS) or _server_busy(r):
            raise DependencyUnavailable(f"redis: {r}") from r
        if isinstance(r, redis_exc.NoPermissionError) or (
            isinstance(r, Exception) and not isinstance(r, redis_exc.ResponseError)
        ):
            raise BeliefStoreError(f"belief read failed: {r}") from r
        if isinstance(r, redis_exc.ResponseError):
            log.warning("belief key refused by redis: read as absent, write skipped", error=str(r)[:200])
            r = None
        out.append(r)
    return out


def _readable(parse: Callable[[Any], R], value: Any) -> R | None:
    """A stored value parsed, or None (absent) when it is missing or not what we write there."""
    if value is None:
        return None
    try:
        return parse(value)
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        log.warning("unparsable belief value treated as absent", error=type(exc).__name__)
        return None


def _server_busy(reply: Any) -> bool:
    """BUSY (another script runs too long) comes as a plain ResponseError: not the user's data."""
    return isinstance(reply, redis_exc.ResponseError) and str(reply).startswith("BUSY")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _belief_from_hash(fields: Mapping[Any, Any]) -> Belief | None:
    f = {_text(k): _text(v) for k, v in fields.items()}
    if "B" not in f:
        return None
    return Belief(
        birth_time=float(f["B"]),
        precision=float(f["P"]),
        updated_at=float(f["t"]),
        observations=int(f["n"]),
        verified=f["v"] == "1",
        model_version=f.get("mv", ""),
        floor=float(f.get("f", "0")),
        floor_rms=float(f["fr"]) if "fr" in f else None,
        floor_earlier=float(f.get("fv", "0")),
    )
