"""The proactive timer: fires Proactive windows within a second of their end.

Every bucket that can become due is in the ``deadlines`` sorted set (score: its end for a
Proactive bucket, end + 60 s for a Reactive one, which is then swept). The timer sleeps until
the earliest deadline, but never longer than ``settings.proactive_poll_max_s``, so a nearer
deadline added meanwhile (by any engine process) is seen within that bound. One ``tick`` is
one Lua script per partition (``lua/tick.lua``) that claims the due buckets (ZREM) and
evaluates them in the same atomic step: with any number of timers, each window fires
exactly once.

"Due" is judged as of now plus the events-clock offset (reference 3.7): when the engines are
30 s behind the stream, windows are evaluated 30 s in the past, so a window does not fire
for events still queued. The timer needs no automations loaded: the engines publish the
trigger specs in Redis (a timer alone in a process works).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import anyio
import redis.asyncio as aioredis

from automations.backoff import Backoff
from automations.connection import CONNECTION_ERRORS
from automations.engine.window import TICK_LIMIT, TickResult, Window
from automations.events import utcnow
from automations.keys import Keys
from automations.settings import Settings

log = logging.getLogger(__name__)


class ProactiveTimer:
    def __init__(
        self, redis: aioredis.Redis, settings: Settings, *, keys: Keys | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._window = Window(redis, keys or Keys.from_settings(settings), settings)
        self._partitions = self._window.keys.partitions
        self.ticks = 0
        self.fired = 0

    def __repr__(self) -> str:
        return f"ProactiveTimer(ticks={self.ticks}, fired={self.fired})"

    async def tick(self) -> TickResult:
        """Handle everything due now in every partition (several script calls where more
        than a page is due); the result has the nearest next deadline."""
        now = self.clock()
        asof = await self._window.events_clock(now)
        results = [await self._tick_partition(n, now, asof) for n in range(self._partitions)]
        deadlines = [r.next_deadline for r in results if r.next_deadline is not None]
        return TickResult(
            due=sum(r.due for r in results), fired=sum(r.fired for r in results),
            next_deadline=min(deadlines) if deadlines else None, as_of=results[0].as_of,
        )

    async def _tick_partition(self, number: int, now: datetime, asof: int) -> TickResult:
        while True:
            result = await self._window.tick(number, now, asof, TICK_LIMIT)
            self.ticks += 1
            self.fired += result.fired
            if result.due < TICK_LIMIT:
                return result

    def sleep_for(self, result: TickResult) -> float:
        """Seconds until the next deadline (as of the lagged clock), capped by the poll bound."""
        cap = self.settings.proactive_poll_max_s
        if result.next_deadline is None:
            return cap
        return max(0.0, min(cap, (result.next_deadline - result.as_of).total_seconds()))

    async def run(self, stopping: anyio.Event) -> None:
        """Tick until ``stopping``; survives Redis outages with a capped backoff."""
        backoff = Backoff("proactive timer", cap_s=self.settings.reconnect_max_s, logger=log)
        while not stopping.is_set():
            try:
                delay = self.sleep_for(await self.tick())
                backoff.recovered()
            except CONNECTION_ERRORS as exc:
                await backoff.wait(exc, stopping)
                continue
            with anyio.move_on_after(delay):
                await stopping.wait()
