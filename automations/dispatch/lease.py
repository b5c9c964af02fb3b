"""Action leases: one running copy of an action at a time, and a stale executor fenced.

The pending entry's idle time (kept fresh by ``Dispatcher._keep_claimed``) stops a slow batch
from being reclaimed, but it is per batch and says nothing once a reclaim does happen (this
dispatcher stalled, or could not reach Redis, past ``claim_idle_ms``): which of its actions are
still running, and may the stalled executor record over the new one? So each action has its own
lease, ``<p>:actions:lease:<idempotency key>`` holding the executor's token with a TTL of
``claim_idle_ms``:

- taken in the ledger's begin script, with the done check (``Ledger.begin``): a held lease
  answers "busy", and the action is not started a second time;
- renewed every third of the TTL by ``LeaseKeeper.keep`` while the action waits or runs (one
  script call for all the leases of a batch), only while it still holds our token: a lease
  that expired (this process stalled) is lost, never silently taken back;
- checked by the record script (compare-and-set on the token): an executor whose lease is held
  by another token, or expired after another executor recorded, is refused ("fenced").

A lease rather than XCLAIM JUSTID alone: the claim protects the batch only until it is taken,
and gives the new reader no way to tell a running action from a dead one, nor to refuse the old
reader's record.
"""

from __future__ import annotations

import logging
import time
import uuid

import anyio
import redis.asyncio as aioredis

from automations.backoff import Backoff
from automations.connection import CONNECTION_ERRORS
from automations.keys import Keys

log = logging.getLogger(__name__)

# KEYS: lease keys. ARGV: token, TTL in ms. Renews the leases still holding the token; returns
# the (1-based) positions of the others: lost.
RENEW_SCRIPT = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"""


class Leases:
    """The dispatcher's lease settings and script; ``keeper()`` for each batch or retry."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, ttl_ms: int, owner: str) -> None:
        self.keys = keys
        self.ttl_ms = ttl_ms
        self.owner = owner
        self._renew = redis.register_script(RENEW_SCRIPT)

    def keeper(self) -> LeaseKeeper:
        """Leases under a new token (one per batch or retry attempt: an executor's identity)."""
        return LeaseKeeper(self, f"{self.owner}:{uuid.uuid4().hex[:16]}")

    async def renew(self, idempotency_keys: list[str], token: str) -> list[str]:
        """Renew the leases ``token`` holds; returns the keys whose lease it lost."""
        lost = await self._renew(keys=[self.keys.action_lease(k) for k in idempotency_keys],
                                 args=[token, self.ttl_ms])
        return [idempotency_keys[int(i) - 1] for i in lost]


class LeaseKeeper:
    """The leases one executor holds (``hold`` once begun, ``release`` once recorded) and the
    loop that renews them (``keep``)."""

    def __init__(self, leases: Leases, token: str) -> None:
        self.leases = leases
        self.token = token
        self.held: set[str] = set()
        self.lost: set[str] = set()
        # When the leases were last known ours (taken or renewed): set before the request, so
        # it errs early. Until half a TTL later no other executor can hold them.
        self.confirmed_at = time.monotonic()

    def __repr__(self) -> str:
        return f"LeaseKeeper({self.token!r}, held={len(self.held)}, lost={len(self.lost)})"

    async def confirm(self, key: str) -> bool:
        """Right before an effect: is the lease still ours? A process stalled (SIGSTOP, a long
        GC, a frozen VM) while its action waited may have lost it, and another dispatcher may
        already have run the action; running it now would repeat the effect. Free while the
        leases were confirmed less than half a TTL ago (the usual case: no round trip), else one
        renewal of this lease."""
        if time.monotonic() - self.confirmed_at < self.leases.ttl_ms / 2000:
            return True
        if await self.leases.renew([key], self.token):
            self.lost.add(key)
            return False
        return True

    def hold(self, key: str) -> None:
        self.held.add(key)
        self.lost.discard(key)  # taken again after it was lost

    def release(self, key: str) -> None:
        self.held.discard(key)

    async def keep(self) -> None:
        """Renew every third of the TTL until cancelled; never raises (a renewal that fails
        only lets the leases run out, the records are fenced then)."""
        interval = self.leases.ttl_ms / 3000
        backoff = Backoff("dispatcher: renewing action leases", cap_s=interval, logger=log)
        delay = interval
        while True:
            await anyio.sleep(delay)
            delay = interval
            held = sorted(self.held - self.lost)
            if not held:
                continue
            asked = time.monotonic()
            try:
                lost = await self.leases.renew(held, self.token)
            except CONNECTION_ERRORS as exc:
                delay = backoff.next_delay(exc)
                continue
            except Exception as exc:  # a bug here must not cancel the actions
                log.error("renewing action leases failed: %s: %s", type(exc).__name__, exc)
                continue
            backoff.recovered()
            if not lost:
                self.confirmed_at = asked
            for key in lost:
                if key in self.held:
                    self.lost.add(key)
                    log.warning("action %s: lease lost (it expired: this dispatcher stalled or "
                                "could not reach Redis for %d ms); another dispatcher may run "
                                "it, and this one's outcome will be refused", key,
                                self.leases.ttl_ms, extra={"idempotency_key": key})
