"""The one consume loop every service uses: a consumer-group reader over a Redis stream.

``StreamConsumer.run()`` reads a batch (XREADGROUP COUNT/BLOCK), hands it to the handler and
acknowledges the whole batch in one XACK after the handler returned. Entries of a dead consumer
are reclaimed with XAUTOCLAIM; an entry delivered ``max_deliveries`` times without success goes
to the dead-letter stream with its last error. Redis going away means a capped exponential
backoff, logged once per outage: the reads and the handler's failures share one ``Outage`` (the
component's, inside ``serve``). Per-entry work is one small dataclass: no pydantic here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis
import redis.exceptions

from automations.backoff import Backoff, Outage, current_outage
from automations.connection import CONNECTION_ERRORS
from automations.metrics import Metrics, current_metrics
from automations.settings import Settings
from automations.streams.dead_letter import DeadLetters
from automations.streams.entries import Entry, Reject
from automations.streams.upkeep import require_redis_version, trim_acknowledged

log = logging.getLogger(__name__)

# Error replies that mean "Redis cannot serve us right now" (memory full, failover, loading;
# UNBLOCKED: the stream's slot moved to another master under a blocked read).
TRANSIENT_REPLIES = ("OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
                     "UNBLOCKED")
AHEAD_SHARE = 4  # a batch of batch_size / AHEAD_SHARE entries or more reads the next ahead
FORGET_IDLE_MS = 86_400_000  # a consumer with nothing pending and idle this long is forgotten


def _outage(exc: BaseException) -> bool:
    """A lost connection, possibly raised by several tasks of a task group at once."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(CONNECTION_ERRORS)[1] is None
    return isinstance(exc, CONNECTION_ERRORS)


Handler = Callable[[list[Entry]], Awaitable[Sequence[Reject] | None]]
LookAhead = Callable[[list[Entry]], Awaitable[None]]


async def stop_when_set(stopping: anyio.Event, stop: Callable[[], None]) -> None:
    """Call ``stop`` once ``stopping`` is set (a service's watcher task; cancel it when the
    service returns by itself)."""
    await stopping.wait()
    stop()


class StreamConsumer:
    """Reads ``stream`` as ``consumer`` of ``group`` and feeds batches to ``handler``.

    The handler gets a list of entries and returns the ones it rejects (acked and dead-lettered
    at once) or None; the others are acked after it returns (``handler_acks``: the handler
    acks them itself, in the same atomic step as its work). If it raises, the batch stays
    pending and is retried with backoff; an entry delivered ``max_deliveries`` times goes to
    ``dead_stream`` with the last error.

    With ``look_ahead``, a large batch (a quarter of ``batch_size`` or more: a backlog, or a
    burst arriving) is handled while the next one is read beside it and given to
    ``look_ahead``, which may prepare it (decode, match) while the handler waits for Redis;
    the handler then gets that same list. If the handler fails, the batch read ahead is not
    handled out of turn: it stays pending and is read again after the failed one. A stopping
    consumer handles it before it returns.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        *,
        stream: str,
        group: str,
        handler: Handler,
        dead_stream: str,
        consumer: str | None = None,
        batch_size: int | None = None,
        maxlen: int | None = None,
        handler_acks: bool = False,
        look_ahead: LookAhead | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.stream = stream
        self.group = group
        self.handler = handler
        self.dead_stream = dead_stream
        self.consumer = consumer or settings.consumer_name
        self.batch_size = batch_size or settings.batch_size
        self.handler_acks = handler_acks  # the handler acks what it accepts, atomically
        self.maxlen = maxlen  # trim what every group acknowledged towards it (None: never)
        self.look_ahead = look_ahead
        self._ahead: list[Entry] = []  # the next batch, read while the last one was handled
        self.handled = 0
        self.rejected = 0
        self.dead = 0
        self.failures = 0
        self.claimed = 0
        self._stopping = False
        self._ready = False
        self._own_pending = True  # first look at what this consumer name left pending
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_trim = 0.0
        self.metrics: Metrics = current_metrics()
        # One outage for the reads and the handler: Redis away is one WARNING, not one a batch.
        self._outage = current_outage() or Outage(f"{stream}/{group}", log)
        # Paces the retries of a failing batch; reset by the next batch that succeeds.
        self._handler_backoff = Backoff(f"{stream}/{group} handler",
                                        cap_s=settings.reconnect_max_s, logger=log,
                                        outage=self._outage)
        self._last_error: dict[str, str] = {}
        # entry id -> times its batch failed in an outage: each failure reads the batch again,
        # which Redis counts as a delivery, but says nothing against the entry
        self._outage_retries: dict[str, int] = {}
        self._dead_letters = DeadLetters(redis, stream=stream, group=group,
                                         consumer=self.consumer, dead_stream=dead_stream)

    def __repr__(self) -> str:
        return (
            f"StreamConsumer({self.stream!r}, group={self.group!r}, consumer={self.consumer!r}, "
            f"handled={self.handled}, rejected={self.rejected}, dead={self.dead}, "
            f"failures={self.failures}, claimed={self.claimed})"
        )

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``run()`` to return after the batch in hand; safe to call any number of times."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def ensure_group(self) -> None:
        """Check the server version and create the group (from the stream's start) if missing."""
        await require_redis_version(self.redis)
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready = True

    async def run(self, stopping: anyio.Event | None = None) -> None:
        """Consume until ``stop()`` (or ``stopping``): claim stale entries, read, handle, ack;
        survive outages."""
        backoff = Backoff(f"{self.stream}/{self.group}", cap_s=self.settings.reconnect_max_s,
                          logger=log, outage=self._outage)
        async with anyio.create_task_group() as tg:
            if stopping is not None:
                tg.start_soon(stop_when_set, stopping, self.stop)
            while not self._stopping:
                try:
                    if not self._ready:
                        await self.ensure_group()
                    await self._step(block=True)
                    backoff.recovered()
                except CONNECTION_ERRORS as exc:
                    self._ready = False
                    await backoff.wait(exc)
                except redis.exceptions.ResponseError as exc:
                    if str(exc).startswith(TRANSIENT_REPLIES):
                        await backoff.wait(exc)
                    elif "NOGROUP" in str(exc):  # the stream vanished (Redis lost its data)
                        log.warning("%s: group %s is gone; recreating it", self.stream,
                                    self.group)
                        self._ready = False
                    else:
                        raise
            await self._drain_ahead()
            tg.cancel_scope.cancel()

    async def run_until_idle(self) -> int:
        """Handle reclaimable, own pending and new entries until none remain; return how many
        entries the handler accepted. For tests and benchmarks (never blocks on an empty read)."""
        if not self._ready:
            await self.ensure_group()
        before = self.handled
        while True:
            self._claim_cursor, self._next_claim = "0-0", 0.0
            seen = 0
            while self._next_claim == 0.0:  # every reclaimable entry, page by page
                seen += await self._handle(await self._claim())
            while self._own_pending:
                entries = await self._read("0", block=False)
                self._own_pending = bool(entries)
                seen += await self._handle(entries)
            seen += await self._handle(await self._read(">", block=False))
            if not seen and not self._own_pending:
                break
        if self.maxlen is not None:
            await trim_acknowledged(self.redis, self.stream, self.maxlen)
        return self.handled - before

    # -- one iteration -----------------------------------------------------------------------
    async def _step(self, *, block: bool) -> int:
        """One read-handle-ack round; returns the number of entries read."""
        now = time.monotonic()
        if self._ahead:
            entries = self._take_ahead()
        elif now >= self._next_claim:
            entries = await self._claim()
        elif self._own_pending:
            entries = await self._read("0", block=False)
            self._own_pending = bool(entries)
        else:
            entries = await self._read(">", block=block)
        if self.look_ahead is not None and len(entries) * AHEAD_SHARE >= self.batch_size \
                and not self._own_pending and not self._stopping:
            await self._handle_reading_ahead(entries)
        else:
            await self._handle(entries)
        if now >= self._next_trim:
            self._next_trim = now + self.settings.trim_interval_s
            await self._housekeeping()
        return len(entries)

    async def _housekeeping(self) -> None:
        """Trim what every group acknowledged; forget consumers of past processes (each run has
        its own name) once they hold nothing and were idle a day."""
        if self.maxlen is not None:
            await trim_acknowledged(self.redis, self.stream, self.maxlen)
        consumers: Any = await self.redis.xinfo_consumers(self.stream, self.group)
        for c in consumers:
            name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            if name != self.consumer and c["pending"] == 0 and c["idle"] > FORGET_IDLE_MS:
                await self.redis.xgroup_delconsumer(self.stream, self.group, name)

    async def _handle(self, entries: list[Entry]) -> int:
        if entries:
            await self._process(entries)
        return len(entries)

    async def _handle_reading_ahead(self, entries: list[Entry]) -> None:
        """Handle ``entries`` while the next batch is read (without blocking: a large batch
        says more are likely waiting) and prepared by ``look_ahead``."""
        reading = asyncio.ensure_future(self._read_ahead())
        try:
            await self._handle(entries)
        except BaseException:
            reading.cancel()
            self._own_pending = True  # what was read ahead is pending: read it again
            raise
        ahead = await reading
        if not self._own_pending:  # else the handler failed: the batch after waits its turn
            self._ahead = ahead

    async def _read_ahead(self) -> list[Entry]:
        try:
            entries = await self._read(">", block=False)
        except Exception:
            self._own_pending = True  # some may have been delivered: look at own pending
            raise
        if entries and self.look_ahead is not None:
            await self.look_ahead(entries)
        return entries

    async def _drain_ahead(self) -> None:
        """Stopping: handle the batch read ahead (it is pending for this consumer name, which
        the next process does not share); without Redis it is left to be claimed."""
        if not self._ahead:
            return
        try:
            await self._handle(self._take_ahead())
        except CONNECTION_ERRORS as exc:
            log.warning("%s/%s: stopping without handling the batch read ahead (%s); "
                        "another consumer claims it", self.stream, self.group, exc)

    def _take_ahead(self) -> list[Entry]:
        entries, self._ahead = self._ahead, []
        return entries

    async def _read(self, start: str, *, block: bool) -> list[Entry]:
        reply: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=self.batch_size,
            block=self.settings.block_ms if block else None,
        )
        if not reply:
            return []
        raw = reply[0][1]
        if start == ">":
            return [Entry(i.decode(), f, 1) for i, f in raw]
        return await self._with_deliveries(raw)

    async def _claim(self) -> list[Entry]:
        """XAUTOCLAIM entries idle longer than ``claim_idle_ms`` (a crashed consumer's)."""
        reply: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.settings.claim_idle_ms,
            start_id=self._claim_cursor, count=self.batch_size,
        )
        cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        self._claim_cursor = cursor
        if cursor == "0-0":
            self._next_claim = time.monotonic() + self.settings.claim_interval_s
        entries = await self._with_deliveries(reply[1])
        self.claimed += len(entries)
        return entries

    async def _with_deliveries(self, raw: list[Any]) -> list[Entry]:
        """Entries read from a pending list, with their delivery counters from XPENDING."""
        present = [(i.decode(), f) for i, f in raw if f]
        gone = [i for i, f in raw if not f]  # deleted while pending: nothing left to handle
        if gone:
            await self.redis.xack(self.stream, self.group, *gone)
        if not present:
            return []
        pending = await self.redis.xpending_range(
            self.stream, self.group, min=present[0][0], max=present[-1][0],
            count=len(present) + 1000, consumername=self.consumer,
        )
        counts = {
            (p["message_id"].decode() if isinstance(p["message_id"], bytes) else p["message_id"]):
            int(p["times_delivered"]) for p in pending
        }
        return [Entry(i, f, counts.get(i, 1)) for i, f in present]

    async def _process(self, entries: list[Entry]) -> None:
        """Dead-letter the over-delivered, run the handler, ack the batch (or keep it pending)."""
        limit = self.settings.max_deliveries
        exhausted = [e for e in entries if self._counted(e) > limit]
        if exhausted:
            self._forget_retries(exhausted)
            await self._dead_letter([
                Reject(e, self._last_error.pop(e.id, f"delivered {e.deliveries - 1} times "
                                                      "without being acknowledged"))
                for e in exhausted
            ])
            entries = [e for e in entries if e.deliveries <= limit]
            if not entries:
                return
        try:
            rejects = await self.handler(entries) or ()
        except Exception as exc:
            await self._handler_failed(entries, exc)
            return
        self._handler_backoff.recovered()
        if rejects:
            await self._dead_letter(list(rejects))
            self.rejected += len(rejects)
        if not self.handler_acks:
            rejected = {r.entry.id for r in rejects}
            # bytes: redis-py packs them ~40% faster than str (XACK of 1,000 ids per batch)
            done = [e.id.encode() for e in entries if e.id not in rejected]
            if done:
                await self.redis.xack(self.stream, self.group, *done)
        self.handled += len(entries)
        if self._last_error:  # empty unless a batch failed
            for e in entries:
                self._last_error.pop(e.id, None)
        self._forget_retries(entries)

    def _counted(self, entry: Entry) -> int:
        """The deliveries that count against ``entry`` (``max_deliveries``): those of its
        batch's reads that an outage did not fail."""
        return entry.deliveries - self._outage_retries.get(entry.id, 0)

    def _forget_retries(self, entries: Sequence[Entry]) -> None:
        if self._outage_retries:  # empty unless an outage failed a batch
            for e in entries:
                self._outage_retries.pop(e.id, None)

    async def _handler_failed(self, entries: list[Entry], exc: Exception) -> None:
        """Keep the batch pending for a retry after a backoff; give up on exhausted entries."""
        self.failures += 1
        reason = f"{type(exc).__name__}: {exc}"
        outage = _outage(exc)  # part of the outage's one line: no traceback per in-flight task
        if not outage:
            log.exception("%s/%s: handler failed on %d entries", self.stream, self.group,
                          len(entries))
        limit = self.settings.max_deliveries
        # An outage (or a cluster slot in migration) says nothing against the entries: they
        # wait for Redis, however many times they were delivered meanwhile.
        if outage:
            for e in entries:
                self._outage_retries[e.id] = self._outage_retries.get(e.id, 0) + 1
        given_up = [] if outage else [Reject(e, reason) for e in entries
                                      if self._counted(e) >= limit]
        if given_up:
            self._forget_retries([r.entry for r in given_up])
            await self._dead_letter(given_up)
        for e in entries:
            if self._counted(e) < limit:
                self._last_error[e.id] = reason
        self._own_pending = True
        # An outage is reported by the backoff (once); a bug above, with its traceback.
        await self._handler_backoff.wait(exc, outage=outage)

    async def _dead_letter(self, rejects: Sequence[Reject]) -> None:
        """To the dead stream, each with its reason (``streams/dead_letter.py``)."""
        await self._dead_letters.send(rejects, self.metrics)
        self.dead += len(rejects)


async def run_restarting(consumer: StreamConsumer, stopping: anyio.Event) -> None:
    """``consumer.run()`` until it is stopped; an error it raises (outages are handled inside)
    is logged and the consumer restarted after a backoff, so a service that reads several
    streams (one outbox per partition) never loses the others to one failing stream."""
    backoff = Backoff(f"{consumer.stream}/{consumer.group} consumer",
                      cap_s=consumer.settings.reconnect_max_s, logger=log)
    while not (consumer.stopping or stopping.is_set()):
        try:
            await consumer.run()
        except Exception as exc:
            log.exception("%s/%s: consumer %s failed; restarting it", consumer.stream,
                          consumer.group, consumer.consumer)
            await backoff.wait(exc, stopping, outage=False)
