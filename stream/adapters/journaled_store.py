"""A belief store with an undo journal, so a replay killed midway can resume with exact state.

Replays keep their beliefs under their own Redis prefix (production keys are never touched). Events
processed after the last checkpoint have already changed those beliefs when the process dies;
re-processing them on resume would then see "later" state and decide differently. So before the
first write to a user in a checkpoint generation, the user's keys are DUMPed into a journal hash;
on resume the open generation is rolled back (RESTORE or DEL) and the replay continues from the
checkpoint's offsets as if it had never crashed. A checkpoint opens a new generation and drops
the old journal. The journal's fields are the users' hash tags (`user_tag`), not raw user ids, for
the same reasons as the key names. The state lives in Redis, isolated by prefix (the in-memory
belief repository is stream/adapters/memory_beliefs.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from stream.adapters.belief_store import BeliefStore, RedisClient, tag_key, user_tag
from stream.core.belief import Belief, Evidence
from stream.core.belief_updates import ApplyResult, SurfaceKey
from stream.core.policy import Action


class JournaledBeliefStore(BeliefStore):
    def __init__(
        self, redis: RedisClient, *, prefix: str, half_life_s: float, ttl_s: float, generation: int = 0
    ) -> None:
        super().__init__(redis, prefix=prefix, half_life_s=half_life_s, ttl_s=ttl_s)
        self._client = redis
        self.prefix = prefix
        self.generation = generation
        self._touched: set[str] = set()

    def journal_key(self, generation: int) -> str:
        return f"{self.prefix}:journal:{generation}"

    async def _before_write(self, user_ids: Sequence[str]) -> None:
        new = sorted({u for u in user_ids if u not in self._touched})
        if not new:
            return

        async def run() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for u in new:
                    for key in (self.belief_key(u), self.events_key(u)):
                        pipe.dump(key)
                        pipe.pttl(key)
                raw = await pipe.execute()
            entries: dict[str | bytes, str | bytes] = {}
            for i, u in enumerate(new):
                b_dump, b_ttl, e_dump, e_ttl = raw[4 * i : 4 * i + 4]
                entries[user_tag(u)] = json.dumps({"b": _enc(b_dump, b_ttl), "e": _enc(e_dump, e_ttl)})
            await self._client.hset(self.journal_key(self.generation), mapping=entries)  # type: ignore[arg-type]

        await self._guard(run)
        self._touched.update(new)

    async def apply(
        self, updates: Mapping[str, Sequence[Evidence]], *, now: float, model_version: str, floor: float
    ) -> ApplyResult:
        await self._before_write(list(updates))
        return await super().apply(updates, now=now, model_version=model_version, floor=floor)

    async def apply_verified(
        self, user_id: str, *, event_id: str, verified_age: float, verified_at: float, now: float
    ) -> Belief:
        await self._before_write([user_id])
        return await super().apply_verified(
            user_id, event_id=event_id, verified_age=verified_age, verified_at=verified_at, now=now
        )

    async def record_actions(self, actions: Mapping[SurfaceKey, Action]) -> None:
        await self._before_write([k.user_id for k in actions])
        await super().record_actions(actions)

    async def delete(self, user_ids: Sequence[str]) -> None:
        await self._before_write(list(user_ids))
        await super().delete(user_ids)

    async def commit(self, new_generation: int) -> None:
        """Called once the checkpoint naming `new_generation` is durable: the old journal is moot."""
        old = self.generation
        self.generation = new_generation
        self._touched.clear()
        await self._client.delete(self.journal_key(old))

    async def rollback(self) -> int:
        """Undo every write of the open generation (after a crash); returns how many users."""
        key = self.journal_key(self.generation)
        entries: dict[bytes, bytes] = await self._client.hgetall(key)  # type: ignore[assignment]
        async with self._client.pipeline(transaction=False) as pipe:
            for tag, blob in entries.items():
                saved = json.loads(blob)
                for name in ("b", "e"):
                    redis_key = tag_key(self.prefix, tag.decode(), name)
                    pipe.delete(redis_key)
                    if saved[name] is not None:
                        dump, ttl = saved[name]
                        pipe.restore(redis_key, max(0, int(ttl)), base64.b64decode(dump), replace=True)
            pipe.delete(key)
            await pipe.execute()
        # Journals of older generations are left over when a crash hit between checkpoint and commit.
        async for stale in self._client.scan_iter(match=f"{self.prefix}:journal:*"):
            if stale.decode() != key:
                await self._client.delete(stale)
        self._touched.clear()
        return len(entries)

    async def drop_namespace(self) -> int:
        """Delete every key of this replay (its beliefs and journals)."""
        n = 0
        batch: list[Any] = []
        async for k in self._client.scan_iter(match=f"{self.prefix}:*", count=500):
            batch.append(k)
            if len(batch) >= 500:
                n += int(await self._client.unlink(*batch))
                batch = []
        if batch:
            n += int(await self._client.unlink(*batch))
        return n


def _enc(dump: bytes | None, pttl: int) -> list[Any] | None:
    if dump is None:
        return None
    return [base64.b64encode(dump).decode(), pttl if pttl > 0 else 0]
