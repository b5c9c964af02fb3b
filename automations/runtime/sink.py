"""Publishes flow and task events from a background thread, so user code never waits on,
or breaks because of, Redis.

Events go into a bounded in-memory buffer; a daemon thread publishes them in batches with
``automations.streams.publish.Publisher``. While Redis is away the buffer holds them (dropping
the oldest beyond ``settings.flow_events_buffer``, with one warning) and the thread retries
with backoff. Closing waits at most ``settings.flow_flush_timeout_s`` for the buffer to drain.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from redis.exceptions import ResponseError

from automations.backoff import Backoff
from automations.connection import CONNECTION_ERRORS, connect
from automations.errors import BusOverloaded
from automations.events import Event
from automations.settings import Settings
from automations.streams.publish import Publisher

log = logging.getLogger(__name__)

_BATCH = 500
# Redis away, or refusing writes for now (OOM, READONLY): the events wait in the buffer.
_OUTAGE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, ResponseError)


class EventSink:
    """A bounded, thread-backed event buffer. ``put`` never blocks and never raises."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._buffer: deque[Event] = deque()
        self._cond = threading.Condition()
        self._inflight = 0
        self._closing = False
        self._abandon = False
        self._dropped = 0
        self.published = 0
        self._thread = threading.Thread(target=self._main, name="automations-events", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return (f"EventSink(buffered={len(self._buffer)}, published={self.published}, "
                f"dropped={self._dropped})")

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._buffer) + self._inflight

    def put(self, event: Event) -> None:
        with self._cond:
            if len(self._buffer) >= self._settings.flow_events_buffer:
                self._buffer.popleft()
                self._dropped += 1
                if self._dropped == 1:
                    log.warning("event buffer full (%d events); dropping the oldest events",
                                self._settings.flow_events_buffer)
            self._buffer.append(event)
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every buffered event is published; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._buffer or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush (bounded), stop the thread, and warn about anything left unpublished."""
        wait = self._settings.flow_flush_timeout_s if timeout is None else timeout
        flushed = self.flush(wait)
        with self._cond:
            self._closing = True
            self._abandon = not flushed
            left = len(self._buffer) + self._inflight
            self._cond.notify_all()
        self._thread.join(max(wait, 1.0))
        if left:
            log.warning("%d flow/task events could not be published (Redis unreachable)", left)

    # -- the publishing thread ---------------------------------------------------------
    def _main(self) -> None:
        asyncio.run(self._run())

    def _next_batch(self) -> list[Event] | None:
        """Up to ``_BATCH`` events, [] after a short idle wait, None once closed."""
        with self._cond:
            if not self._buffer and not self._closing:
                self._cond.wait(0.1)
            if self._abandon or (self._closing and not self._buffer):
                return None
            batch = [self._buffer.popleft() for _ in range(min(_BATCH, len(self._buffer)))]
            self._inflight = len(batch)
            return batch

    def _settle(self, batch: list[Event], ok: bool) -> None:
        with self._cond:
            self._inflight = 0
            if ok:
                self.published += len(batch)
            else:
                self._buffer.extendleft(reversed(batch))
            self._cond.notify_all()

    async def _run(self) -> None:
        redis = connect(self._settings)
        publisher = Publisher(redis, self._settings)
        # A short cap: the flow's process waits at most flow_flush_timeout_s for the buffer.
        redis_backoff = Backoff("flow events (buffering them)", first_s=0.1, cap_s=2.0,
                                logger=log)
        try:
            while (batch := self._next_batch()) is not None:
                if not batch:
                    continue
                try:
                    await publisher.publish(batch)
                except _OUTAGE as exc:
                    self._settle(batch, ok=False)
                    await redis_backoff.wait(exc)
                    continue
                except BusOverloaded as exc:  # published, but the engine is behind: slow down
                    self._settle(batch, ok=True)
                    await redis_backoff.wait(exc, outage=False)
                    continue
                except Exception as exc:  # a bug; keep the events all the same, retry later
                    self._settle(batch, ok=False)
                    if not redis_backoff.failing:
                        log.exception("cannot publish flow events; buffering them")
                    await redis_backoff.wait(exc, outage=False)
                    continue
                self._settle(batch, ok=True)
                redis_backoff.recovered()
        finally:
            await redis.aclose()
