"""Delayed action retries in Redis: backoff with jitter, and a leased queue shared by every
dispatcher.

A transient failure does not sleep inside the firings batch (that would stall every firing
behind it): the attempt is written as a job (``<p>:actions:retry-jobs`` hash, due time in the
``<p>:actions:retries`` sorted set) in the same MULTI as its ``.failed`` event, and the
firings entry is acked. Any dispatcher claims due jobs with a lease (the score moves to
now + lease in one script); a dispatcher that dies mid-attempt loses the lease and the job
becomes due again (one interrupted by a Redis outage is ``release``d: due as soon as Redis is
back). Finishing or rescheduling a job happens in the ledger's record script, with the outcome
(``Ledger.commit``); a second claimer of a job whose attempt still runs finds the action's
lease held (``dispatch/lease.py``) and waits instead of running it twice.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from automations.keys import Keys
from automations.settings import Settings

MAX_RETRY_AFTER_S = 3600.0
"""A server's Retry-After is honoured up to an hour."""

CLAIM_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, job)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class RetryJob:
    """The next attempt of one action: everything needed to run it without the stream entry."""

    key: str
    firing: str
    """The firing JSON."""
    automation_id: str
    index: int
    action_type: str
    """The retry runs the automation's current action at ``index`` (the job holds no action
    config, so no inline header secret is copied); a changed type means it was edited away."""
    attempt: int

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> RetryJob:
        return cls(**orjson.loads(raw))


def backoff(attempt: int, settings: Settings, rng: random.Random,
            retry_after: float | None = None) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, "equal jitter" (half fixed,
    half random, so retries of a burst spread out), never shorter than Retry-After."""
    delay: float = min(settings.action_retry_max_s,
                       settings.action_retry_base_s * 2.0 ** (attempt - 1))
    delay = delay / 2 + rng.uniform(0, delay / 2)
    if retry_after:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


class RetryQueue:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._claim = redis.register_script(CLAIM_SCRIPT)

    def schedule(self, pipe: Pipeline, job: RetryJob, due: float) -> None:
        """Queue ``job`` at epoch ``due`` inside the caller's MULTI (the dispatcher's own
        outcomes go through ``Ledger.commit`` instead)."""
        pipe.hset(self._keys.action_retry_jobs, job.key, job.to_json())
        pipe.zadd(self._keys.action_retries, {job.key: due})

    async def claim(self, now: float, lease_s: float, limit: int) -> list[RetryJob]:
        """Due jobs, leased to the caller until ``now + lease_s``."""
        raw = await self._claim(
            keys=[self._keys.action_retries, self._keys.action_retry_jobs],
            args=[now, now + lease_s, limit],
        )
        return [RetryJob.from_json(r) for r in raw]

    async def release(self, key: str, due: float) -> None:
        """Make a claimed job due at ``due`` instead of its lease's end (if still queued)."""
        await self._redis.zadd(self._keys.action_retries, {key: due}, xx=True)

    async def next_due(self) -> float | None:
        first = await self._redis.zrange(self._keys.action_retries, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def pending(self) -> int:
        count: int = await self._redis.zcard(self._keys.action_retries)
        return count
