"""The action ledger: ``done:<firing id>:<action index>`` checked before an action and
recorded, with its events, in one transaction after it; and, for executors (``LedgerPort``),
per-target delivered records and notification cooldowns.

``begin`` checks a whole batch in one script: for every action not yet done it publishes the
``action.triggered`` event and answers 1, for a done one 0 (nothing published). ``commit``
writes the outcome in one MULTI: the done record (``done`` or ``gave-up``), the action events,
the retry queue change and the dead letter, together or not at all. Durability is Redis's
(AOF everysec: a done record of the last second can be lost with the server).

A cooldown is a marker per automation and target holding its owner's idempotency key (expiring
with the cooldown) and a counter of the notifications it dropped; a claim is one script call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from automations.dispatch.retries import RetryJob, RetryQueue
from automations.events import Event
from automations.keys import Keys
from automations.settings import Settings

DONE, GAVE_UP = b"done", b"gave-up"
DELIVERED = b"1"
BEGIN_CHUNK = 500
DROPPED_TTL_MIN_S = 86_400
"""A cooldown's dropped-counter outlives it (at least a day, or ten cooldowns), so the next
notification sent can still say how many were suppressed."""

BEGIN_SCRIPT = """
local stream, history = KEYS[#KEYS - 1], KEYS[#KEYS]
local out = {}
for i = 1, #KEYS - 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[i] = 0
  else
    local data = ARGV[3 * i]
    if data ~= '' then
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', 'data', data, 'id', ARGV[3 * i + 1])
    end
    if ARGV[3 * i + 2] ~= '' then
      redis.call('XADD', history, 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[3 * i + 2])
    end
    out[i] = 1
  end
end
return out
"""

# KEYS: marker, counter; ARGV: owner, cooldown in ms, counter expiry in s. Returns how many
# were dropped since the last one sent (the claim is granted), or -1 (dropped and counted).
COOLDOWN_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  local dropped = redis.call('GET', KEYS[2])
  if not dropped then return 0 end
  redis.call('DEL', KEYS[2])
  return tonumber(dropped)
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 0
end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return -1
"""


class Ledger:
    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings,
                 retries: RetryQueue) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.retries = retries
        self._begin = redis.register_script(BEGIN_SCRIPT)
        self._cooldown = redis.register_script(COOLDOWN_SCRIPT)

    async def begin(self, items: Sequence[tuple[str, Event | None]],
                    history: Sequence[bytes | None] = ()) -> list[bool]:
        """For each (idempotency key, triggered event or None): True when the action is not
        done yet (its event, and its ``history`` record if any, are then published), False
        when it is."""
        fresh: list[bool] = []
        records = list(history) + [None] * (len(items) - len(history))
        for start in range(0, len(items), BEGIN_CHUNK):
            chunk = items[start:start + BEGIN_CHUNK]
            args: list[Any] = [self.settings.events_maxlen, self.settings.history_maxlen]
            for (_, event), record in zip(chunk, records[start:start + BEGIN_CHUNK], strict=True):
                args += [event.to_json(), str(event.id)] if event is not None else ["", ""]
                args.append(record or "")
            flags = await self._begin(
                keys=[*(self.keys.done(key) for key, _ in chunk), self.keys.events,
                      self.keys.history], args=args)
            fresh.extend(bool(int(flag)) for flag in flags)
        return fresh

    async def commit(self, key: str, *, done: bytes | None, events: Sequence[Event],
                     job: RetryJob | None = None, dead: Mapping[str, Any] | None = None,
                     retry: tuple[RetryJob, float] | None = None,
                     history: bytes | None = None) -> None:
        """One MULTI: the done record, the action events, the retry queue, the dead letter and
        the history record change together or not at all."""
        pipe: Pipeline = self.redis.pipeline(transaction=done is not None or retry is not None)
        if done is not None:
            pipe.set(self.keys.done(key), done, ex=self.settings.action_done_ttl_s)
        for event in events:
            pipe.xadd(self.keys.events, {b"data": event.to_json(), b"id": str(event.id)},
                      maxlen=self.settings.events_maxlen, approximate=True)
        if job is not None:
            self.retries.finish(pipe, key)
        if retry is not None:
            self.retries.schedule(pipe, *retry)
        if dead is not None:
            pipe.xadd(self.keys.dead(self.keys.firings), {k: v for k, v in dead.items()})
        if history is not None:
            pipe.xadd(self.keys.history, {b"data": history},
                      maxlen=self.settings.history_maxlen, approximate=True)
        await pipe.execute()

    # -- LedgerPort: state executors keep ------------------------------------------------
    async def delivered(self, keys: Sequence[str], /) -> list[bool]:
        if not keys:
            return []
        found: list[Any] = await self.redis.mget([self.keys.done(key) for key in keys])
        return [value is not None for value in found]

    async def mark_delivered(self, key: str, /) -> None:
        await self.redis.set(self.keys.done(key), DELIVERED, ex=self.settings.action_done_ttl_s)

    async def claim_cooldown(
        self, automation_id: UUID, target: str, owner: str, ttl_s: float, /
    ) -> int | None:
        """One script call: claim the marker, or recognise our own claim of an earlier
        attempt, or count the drop."""
        automation = str(automation_id)
        dropped = await self._cooldown(
            keys=[self.keys.cooldown(automation, target),
                  self.keys.cooldown_dropped(automation, target)],
            args=[owner, max(1, int(ttl_s * 1000)), max(DROPPED_TTL_MIN_S, int(ttl_s * 10))])
        return None if int(dropped) < 0 else int(dropped)

    async def release_cooldown(self, automation_id: UUID, target: str, /) -> None:
        await self.redis.delete(self.keys.cooldown(str(automation_id), target))
