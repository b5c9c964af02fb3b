"""The action ledger: ``done:<firing id>:<action index>`` checked (and the action's lease taken)
before an action, and its outcome recorded, fenced by that lease, after it; and, for executors
(``LedgerPort``), per-target delivered and sending records and notification cooldowns.

``begin`` checks a whole batch in one script: for every action neither done nor leased to
another executor it takes the lease (``dispatch/lease.py``), publishes the ``action.triggered``
event and answers ``RUN``; a done one answers ``SKIP``, a leased one ``BUSY`` (nothing
published). ``commit`` writes an outcome in one script: the done record (``done`` or
``gave-up``), the action events, the retry queue change, the dead letter and the history
record, together or not at all, and only while the executor's token still holds the lease
(compare-and-set: a stale executor is ``FENCED``). A commit that finds the action done already
writes nothing (``ALREADY``), so retrying a commit whose reply was lost repeats nothing.
``record`` is the commit every outcome goes through: retried while Redis is away, up to
``claim_idle_ms``, and shielded from cancellation, since the effect it records has happened.
Durability is Redis's (AOF everysec: a done record of the last second can be lost with the
server).

A cooldown is a marker per automation and target holding its owner's idempotency key (expiring
with the cooldown) and a counter of the notifications it dropped; a claim is one script call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from uuid import UUID

import anyio
import redis.asyncio as aioredis

from automations.backoff import Backoff
from automations.dispatch.isolation import redis_unavailable
from automations.dispatch.retries import RetryJob, RetryQueue
from automations.events import Event
from automations.keys import Keys
from automations.settings import Settings

log = logging.getLogger(__name__)

DONE, GAVE_UP = b"done", b"gave-up"
DELIVERED = b"1"
BEGIN_CHUNK = 500
DEAD_ACTIONS = "firings"
"""Given-up actions go to ``keys.dead(DEAD_ACTIONS)`` (``<prefix>:{g}:dead:firings``), in the
global slot with the done records, since the record script writes both. The ledger's scripts
touch global keys only; the firing's ack on its partition's outbox is a separate command after
them (a crash in between redelivers a firing whose actions are done: ``begin`` skips them)."""
DROPPED_TTL_MIN_S = 86_400
"""A cooldown's dropped-counter outlives it (at least a day, or ten cooldowns), so the next
notification sent can still say how many were suppressed."""


class Begun(IntEnum):
    SKIP = 0
    """Done already (by an earlier delivery of the firing, or another dispatcher)."""
    RUN = 1
    """Not done, lease taken: run it."""
    BUSY = 2
    """Another executor holds its lease: it is running there right now."""


class Recorded(IntEnum):
    FENCED = 0
    """Refused: another executor holds the lease, or recorded the action after ours expired."""
    WRITTEN = 1
    ALREADY = 2
    """The action was recorded already by this executor (a retried commit): nothing written."""


@dataclass(frozen=True, slots=True)
class Start:
    """One action to begin: its idempotency key, its ``action.triggered`` event (JSON and id,
    encoded by the caller so a firing that cannot be encoded fails alone) and history record."""

    key: str
    event: bytes | None = None
    event_id: str = ""
    history: bytes | None = None


# KEYS: n done keys, n lease keys, events stream, history stream. ARGV: events maxlen, history
# maxlen, token, lease TTL (ms), then per action: event JSON, event id, history record.
BEGIN_SCRIPT = """
local n = (#KEYS - 2) / 2
local stream, history = KEYS[#KEYS - 1], KEYS[#KEYS]
local out = {}
for i = 1, n do
  local holder = redis.call('GET', KEYS[n + i])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[i] = 0
  elseif holder and holder ~= ARGV[3] then
    out[i] = 2
  else
    redis.call('SET', KEYS[n + i], ARGV[3], 'PX', ARGV[4])
    local data = ARGV[3 * i + 2]
    if data ~= '' then
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', 'data', data, 'id', ARGV[3 * i + 3])
    end
    if ARGV[3 * i + 4] ~= '' then
      redis.call('XADD', history, 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[3 * i + 4])
    end
    out[i] = 1
  end
end
return out
"""

# KEYS: done, lease, events, retries zset, retry jobs hash, dead stream, history, sending marks.
# ARGV: 1 token ('' = unfenced), 2 done value ('' = none), 3 done TTL (s), 4 events maxlen,
# 5 history maxlen, 6 idempotency key, 7 finish the job ('1'), 8 retry mode ('' | 'schedule':
# the next attempt | 'wait': run it once the lease is free, unless a job is queued), 9 job JSON,
# 10 due, 11 history record, 12 lease TTL (ms), 13 event count n, then n (JSON, id) pairs, then
# the dead letter's fields. Returns 0 fenced, 1 written, 2 already recorded.
# A final outcome (done or given up) drops the notification sending marks: only a re-drive
# runs the action again, and it is meant to send. A done record keeps the lease a TTL longer
# (a retried commit then knows it as its own); a scheduled retry frees it for the next attempt.
RECORD_SCRIPT = """
local token, key = ARGV[1], ARGV[6]
local holder = redis.call('GET', KEYS[2])
local done = redis.call('EXISTS', KEYS[1]) == 1
if token ~= '' and holder ~= token and (holder or done) then return 0 end
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[4], key)
  redis.call('HDEL', KEYS[5], key)
end
if done then return 2 end
local mode = ARGV[8]
if mode ~= '' then
  local queued = redis.call('HGET', KEYS[5], key)
  if mode == 'schedule' and queued == ARGV[9] then return 2 end
  if mode == 'schedule' or not queued then
    redis.call('HSET', KEYS[5], key, ARGV[9])
    redis.call('ZADD', KEYS[4], ARGV[10], key)
  elseif queued == ARGV[9] then
    redis.call('ZADD', KEYS[4], ARGV[10], key)
  end
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[8])
end
local n = tonumber(ARGV[13])
for i = 0, n - 1 do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'data', ARGV[14 + 2 * i],
             'id', ARGV[15 + 2 * i])
end
if #ARGV > 13 + 2 * n then
  redis.call('XADD', KEYS[6], '*', unpack(ARGV, 14 + 2 * n))
end
if ARGV[11] ~= '' then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[5], '*', 'data', ARGV[11])
end
if token ~= '' and holder == token then
  if ARGV[2] ~= '' then
    redis.call('PEXPIRE', KEYS[2], ARGV[12])
  else
    redis.call('DEL', KEYS[2])
  end
end
return 1
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

# KEYS: a marker; ARGV: its owner. Deletes it only if the owner still holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: an action's sending marks; ARGV: target, owner, TTL (s), force ('1'). 1: marked.
CLAIM_SEND_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  if ARGV[4] ~= '1' then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: an action's sending marks; ARGV: target, owner. Removes the mark if the owner holds it.
RELEASE_SEND_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class Ledger:
    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings,
                 retries: RetryQueue) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.retries = retries
        self.dead_stream = keys.dead(DEAD_ACTIONS)
        self._begin = redis.register_script(BEGIN_SCRIPT)
        self._record = redis.register_script(RECORD_SCRIPT)
        self._cooldown = redis.register_script(COOLDOWN_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._claim_send = redis.register_script(CLAIM_SEND_SCRIPT)
        self._release_send = redis.register_script(RELEASE_SEND_SCRIPT)

    @property
    def lease_ttl_ms(self) -> int:
        """An action lease lasts as long as a pending entry before it may be reclaimed."""
        return self.settings.claim_idle_ms

    async def begin(self, starts: Sequence[Start], token: str) -> list[Begun]:
        """For each action: ``RUN`` when it is neither done nor leased to another token (the
        lease is taken for ``token``, its event and history record published), else ``SKIP``
        (done) or ``BUSY`` (leased), with nothing published."""
        found: list[Begun] = []
        for first in range(0, len(starts), BEGIN_CHUNK):
            chunk = starts[first:first + BEGIN_CHUNK]
            args: list[Any] = [self.settings.events_maxlen, self.settings.history_maxlen, token,
                               self.lease_ttl_ms]
            for start in chunk:
                args += [start.event or "", start.event_id, start.history or ""]
            flags = await self._begin(
                keys=[*(self.keys.done(s.key) for s in chunk),
                      *(self.keys.action_lease(s.key) for s in chunk),
                      self.keys.events, self.keys.history], args=args)
            found.extend(Begun(int(flag)) for flag in flags)
        return found

    async def commit(self, key: str, *, token: str = "", done: bytes | None = None,
                     events: Sequence[Event] = (), job: RetryJob | None = None,
                     dead: Mapping[str, Any] | None = None,
                     retry: tuple[RetryJob, float] | None = None, wait: bool = False,
                     history: bytes | None = None) -> Recorded:
        """One script: the done record, the action events, the retry queue (``retry``: the
        next attempt; with ``wait``, a job that runs once the lease is free, unless one is
        queued), the dead letter and the history record change together or not at all, and
        only while ``token`` (if given) holds the action's lease."""
        job_json, due = (retry[0].to_json(), retry[1]) if retry is not None else (b"", 0.0)
        mode = "" if retry is None else "wait" if wait else "schedule"
        args: list[Any] = [
            token, done or "", self.settings.action_done_ttl_s, self.settings.events_maxlen,
            self.settings.history_maxlen, key, "1" if job is not None else "", mode, job_json,
            due, history or "", self.lease_ttl_ms, len(events)]
        for event in events:
            args += [event.to_json(), str(event.id)]
        for name, value in (dead or {}).items():
            args += [name, value]
        flag = await self._record(
            keys=[self.keys.done(key), self.keys.action_lease(key), self.keys.events,
                  self.keys.action_retries, self.keys.action_retry_jobs,
                  self.dead_stream, self.keys.history,
                  self.keys.sending(key)], args=args)
        return Recorded(int(flag))

    async def record(self, key: str, **outcome: Any) -> Recorded:
        """``commit`` that survives a Redis blip and cannot be interrupted: retried with
        backoff while Redis is unreachable (or refusing writes for now), for up to
        ``claim_idle_ms``, shielded from cancellation (a shutdown or a failing sibling must
        not drop the record of an effect that happened). Raises the last error after that."""
        with anyio.CancelScope(shield=True):
            recorded = await self._commit_retrying(key, outcome)
        return recorded

    async def _commit_retrying(self, key: str, outcome: dict[str, Any]) -> Recorded:
        backoff = Backoff(f"action {key}: recording its outcome",
                          cap_s=self.settings.reconnect_max_s, logger=log)
        deadline = time.monotonic() + self.settings.claim_idle_ms / 1000
        while True:
            try:
                recorded = await self.commit(key, **outcome)
            except Exception as exc:
                if not redis_unavailable(exc):
                    raise
                delay = backoff.next_delay(exc)
                if time.monotonic() + delay > deadline:
                    raise
                await anyio.sleep(delay)
                continue
            backoff.recovered()
            return recorded

    # -- LedgerPort: state executors keep ------------------------------------------------
    async def delivered(self, keys: Sequence[str], /) -> list[bool]:
        if not keys:
            return []
        found: list[Any] = await self.redis.mget([self.keys.done(key) for key in keys])
        return [value is not None for value in found]

    async def mark_delivered(self, key: str, /) -> None:
        await self.redis.set(self.keys.done(key), DELIVERED, ex=self.settings.action_done_ttl_s)

    async def claim_send(self, key: str, target: str, owner: str, force: bool, /) -> bool:
        marked = await self._claim_send(
            keys=[self.keys.sending(key)],
            args=[target, owner, self.settings.action_done_ttl_s, "1" if force else ""])
        return bool(int(marked))

    async def release_send(self, key: str, target: str, owner: str, /) -> None:
        await self._release_send(keys=[self.keys.sending(key)], args=[target, owner])

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

    async def release_cooldown(self, automation_id: UUID, target: str, owner: str, /) -> None:
        """Drop the claim if ``owner`` still holds it (not one taken since it expired)."""
        await self._release(keys=[self.keys.cooldown(str(automation_id), target)],
                            args=[owner])
