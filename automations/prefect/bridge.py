"""The Prefect event bridge: a Prefect 3 server's events into our events stream, and our
automation events back out to it.

In: Prefect's websocket (``/api/events/out``) gives low latency but no guarantee: the server
drops silently when a subscriber's 256-entry queue is full, and nothing covers a disconnect.
So correctness rests on reconciliation through ``POST /api/events/filter``: on start and every
``prefect_bridge_reconcile_s``, a pass re-reads ``[cursor - overlap, now - settle]`` (``settle``
covers Prefect's ~5 s persistence lag) and advances the cursor to the window's end only when
the pass completed. Each event is published at most once: one script sets
``prefect:seen:<id>`` (NX, with a TTL longer than any window re-read) and appends the event
only if that was new, so live and reconciled copies, page overlaps and restarts never
duplicate. What remains lost is an event that reaches Prefect while the bridge is down with
an ``occurred`` older than ``cursor - overlap`` (docs/prefect.md).

Out: events named ``prefect.automation.*`` that this engine wrote to its stream (firings and
action outcomes, not the ones bridged in) are posted to ``/api/events`` with the label
``automations.origin = <prefix>``, so Prefect's UI shows what our engine did; the bridge drops
their echo on the way back in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import connect as ws_connect

from automations.backoff import Backoff, Outage
from automations.connection import CONNECTION_ERRORS
from automations.errors import AutomationsError
from automations.events import RESOURCE_ID, Event, utcnow
from automations.keys import Keys
from automations.metrics import Metrics, current_metrics
from automations.prefect.client import PrefectClient, PrefectError, client_for
from automations.settings import Settings
from automations.streams.publish import over_bound
from automations.streams.upkeep import TRIM_STEP, trim_acknowledged

log = logging.getLogger(__name__)

ORIGIN_LABEL = "automations.origin"
WRITE_BACK = "prefect.automation."
RECONCILE_CHUNK = 250  # events per publish script call during a pass
WRITE_BACK_CHUNK = 100
FAR_FUTURE = timedelta(days=3650)  # the live filter's `until` must be set (else: no live events)

# KEYS: the events stream, then one seen marker per event; ARGV: ttl, then id, data per event.
# Returns the stream length, then 1 (appended) or 0 (seen before) per event.
PUBLISH_SCRIPT = """
local ttl = tonumber(ARGV[1])
local out = {0}
for i = 2, #KEYS do
  local id, data = ARGV[2 * (i - 1)], ARGV[2 * (i - 1) + 1]
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], '*', 'data', data, 'id', id)
    out[i] = 1
  else
    out[i] = 0
  end
end
out[1] = redis.call('XLEN', KEYS[1])
return out
"""

PREFECT_ERRORS: tuple[type[BaseException], ...] = (
    PrefectError, OSError, TimeoutError, websockets.exceptions.WebSocketException,
)


def parse_time(value: str | bytes | None) -> datetime | None:
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Bridge:
    """One Prefect server bridged into one prefix; ``run`` until ``stopping``."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, client: PrefectClient, *,
                 keys: Keys | None = None, metrics: Metrics | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.client = client
        self.keys = keys or Keys.from_settings(settings)
        self.metrics = metrics or current_metrics()
        self.origin = settings.prefix
        widest = max(settings.prefect_bridge_overlap_s, settings.prefect_bridge_startup_overlap_s)
        self.seen_ttl_s = int(widest * 3) + 60
        self.outage = Outage(f"Prefect at {client.api_url}", log)
        self._script = redis.register_script(PUBLISH_SCRIPT)
        self.connected = anyio.Event()  # set once the websocket first subscribed (tests)
        self.passes = 0

    def __repr__(self) -> str:
        return f"Bridge({self.client.api_url!r} -> {self.keys.events!r})"

    async def run(self, stopping: anyio.Event) -> None:
        log.info("bridging Prefect at %s into %s", self.client.api_url, self.keys.events)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._live, stopping)
            tg.start_soon(self._reconcile_loop, stopping)
            tg.start_soon(self._write_back_loop, stopping)
            await stopping.wait()
            tg.cancel_scope.cancel()

    # -- in ------------------------------------------------------------------------------------
    async def accept(self, raw: Iterable[Mapping[str, Any]], path: str) -> int:
        """Publish the new ones of ``raw`` (Prefect event JSON); how many were new."""
        batch: list[tuple[str, bytes, Event]] = []
        for item in raw:
            resource = item.get("resource")
            if isinstance(resource, Mapping) and resource.get(ORIGIN_LABEL) == self.origin:
                self.metrics.prefect_events.labels(path, "echo").inc()
                continue
            try:
                event = Event.parse(dict(item))
                data = event.encoded()
            except AutomationsError as exc:
                log.warning("skipping a Prefect event this engine cannot take (%s): %s",
                            item.get("id"), exc)
                self.metrics.prefect_events.labels(path, "invalid").inc()
                continue
            batch.append((str(event.id), data, event))
        if not batch:
            return 0
        keys = [self.keys.events, *(self.keys.prefect_seen(i) for i, _, _ in batch)]
        args: list[Any] = [self.seen_ttl_s]
        for event_id, data, _ in batch:
            args += [event_id, data]
        reply = await self._script(keys=keys, args=args)
        length, flags = int(reply[0]), [int(f) for f in reply[1:]]
        added = sum(flags)
        self.metrics.prefect_events.labels(path, "published").inc(added)
        if len(flags) - added:
            self.metrics.prefect_events.labels(path, "duplicate").inc(len(flags) - added)
        if path == "live" and added:
            newest = max(e.occurred for (_, _, e), f in zip(batch, flags, strict=True) if f)
            self.metrics.prefect_lag.set(max((utcnow() - newest).total_seconds(), 0.0))
        await self._keep_bounded(length)
        return added

    async def _keep_bounded(self, length: int) -> None:
        """Trim as publishers do; wait (back-pressure) while the engine is far behind."""
        maxlen = self.settings.events_maxlen
        if length > maxlen + TRIM_STEP // 2:
            length -= await trim_acknowledged(self.redis, self.keys.events, maxlen)
        waited = 0.0
        while over_bound(length, maxlen) and waited < self.settings.publish_wait_s:
            await anyio.sleep(0.2)
            waited += 0.2
            await trim_acknowledged(self.redis, self.keys.events, maxlen)
            length = int(await self.redis.xlen(self.keys.events))

    async def reconcile(self, overlap_s: float, now: datetime | None = None) -> int:
        """One REST pass over ``[cursor - overlap, now - settle]``; the cursor moves to the
        window's end only when the whole window was published. How many events were new."""
        now = now or utcnow()
        until = now - timedelta(seconds=self.settings.prefect_bridge_settle_s)
        cursor = parse_time(await self.redis.get(self.keys.prefect_cursor))
        since = (cursor or until) - timedelta(seconds=overlap_s)
        added = 0
        if since < until:
            chunk: list[dict[str, Any]] = []
            async for event in self.client.events(since, until):
                chunk.append(event)
                if len(chunk) >= RECONCILE_CHUNK:
                    added += await self.accept(chunk, "reconcile")
                    chunk = []
            added += await self.accept(chunk, "reconcile")
            if cursor is None or until > cursor:
                await self.redis.set(self.keys.prefect_cursor, until.isoformat())
                cursor = until
        self.passes += 1
        self.metrics.prefect_reconciles.labels("completed").inc()
        if cursor is not None:
            self.metrics.prefect_cursor_age.set((utcnow() - cursor).total_seconds())
        return added

    async def _reconcile_loop(self, stopping: anyio.Event) -> None:
        backoff = Backoff("prefect bridge: reconciling", cap_s=30.0, logger=log,
                          outage=self.outage)
        overlap = self.settings.prefect_bridge_startup_overlap_s
        while not stopping.is_set():
            try:
                added = await self.reconcile(overlap)
            except (*PREFECT_ERRORS, *CONNECTION_ERRORS) as exc:
                self.metrics.prefect_reconciles.labels("failed").inc()
                await backoff.wait(exc, stopping)
                continue
            backoff.recovered()
            if added:
                log.info("prefect bridge: reconciliation published %d missed events", added)
            overlap = self.settings.prefect_bridge_overlap_s
            with anyio.move_on_after(self.settings.prefect_bridge_reconcile_s):
                await stopping.wait()

    async def _live(self, stopping: anyio.Event) -> None:
        backoff = Backoff("prefect bridge: websocket", first_s=0.5, cap_s=30.0, logger=log,
                          outage=self.outage)
        while not stopping.is_set():
            try:
                await self._subscribe(backoff)
                exc: BaseException = PrefectError("the websocket closed")
            except (*PREFECT_ERRORS, *CONNECTION_ERRORS) as error:
                exc = error
            self.metrics.prefect_connected.set(0)
            if not stopping.is_set():
                await backoff.wait(exc, stopping)

    async def _subscribe(self, backoff: Backoff) -> None:
        """Auth, a filter with ``until`` far ahead and no backfill (the passes do that), then
        every event frame until the socket closes."""
        now = utcnow()
        filter_ = {"occurred": {"since": (now - timedelta(days=1)).isoformat(),
                                "until": (now + FAR_FUTURE).isoformat()}, "order": "ASC"}
        async with ws_connect(self.client.events_out_url, subprotocols=["prefect"],  # type: ignore[list-item]
                              open_timeout=10, max_size=None) as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": self.client.auth_string})
                          .decode())
            reply = orjson.loads(await ws.recv())
            if reply.get("type") != "auth_success":
                raise PrefectError(f"Prefect refused the websocket: {reply}")
            await ws.send(orjson.dumps({"type": "filter", "filter": filter_, "backfill": False})
                          .decode())
            self.metrics.prefect_connected.set(1)
            self.connected.set()
            backoff.recovered()
            async for message in ws:
                frame = orjson.loads(message)
                if frame.get("type") == "event" and isinstance(frame.get("event"), dict):
                    await self.accept([frame["event"]], "live")

    # -- out -----------------------------------------------------------------------------------
    async def write_back(self, entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> int:
        """Post the automation events among ``entries`` (events-stream entries) to Prefect."""
        candidates: list[dict[str, Any]] = []
        for _, fields in entries:
            try:
                event = orjson.loads(fields[b"data"])
            except (KeyError, orjson.JSONDecodeError):
                continue
            if not str(event.get("event", "")).startswith(WRITE_BACK):
                continue
            resource = event.get("resource") or {}
            if not isinstance(resource, dict) or not resource.get(RESOURCE_ID):
                continue
            candidates.append(event)
        if not candidates:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in candidates:
                pipe.exists(self.keys.prefect_seen(str(event.get("id"))))
            bridged = await pipe.execute()
        ours = [e for e, came_in in zip(candidates, bridged, strict=True) if not came_in]
        for event in ours:
            event["resource"] = {**event["resource"], ORIGIN_LABEL: self.origin}
        for start in range(0, len(ours), WRITE_BACK_CHUNK):
            await self.client.post_events(ours[start:start + WRITE_BACK_CHUNK])
        self.metrics.prefect_written_back.inc(len(ours))
        return len(ours)

    async def _write_back_loop(self, stopping: anyio.Event) -> None:
        backoff = Backoff("prefect bridge: writing back", cap_s=30.0, logger=log,
                          outage=self.outage)
        position: str | None = None
        while not stopping.is_set():
            try:
                if position is None:
                    position = await self._write_back_start()
                reply: Any = await self.redis.xread({self.keys.events: position}, count=500,
                                                    block=500)
                entries: Any = reply[0][1] if reply else []
                if entries:
                    await self.write_back(entries)
                    position = entries[-1][0].decode()
                    await self.redis.set(self.keys.prefect_writeback, position)
                backoff.recovered()
            except (*PREFECT_ERRORS, *CONNECTION_ERRORS) as exc:
                await backoff.wait(exc, stopping)

    async def _write_back_start(self) -> str:
        """Where the write-back left off; the stream's end the first time."""
        stored: Any = await self.redis.get(self.keys.prefect_writeback)
        if stored:
            return str(stored.decode())
        last: Any = await self.redis.xrevrange(self.keys.events, count=1)
        position = last[0][0].decode() if last else "0-0"
        await self.redis.set(self.keys.prefect_writeback, position)
        return str(position)


async def run_bridge(redis: aioredis.Redis, settings: Settings, keys: Keys,
                     stopping: anyio.Event) -> None:
    """The bridge of ``settings.prefect_api_url`` until ``stopping``; nothing when unset."""
    if not settings.prefect_api_url:
        log.info("prefect bridge: AUTOMATIONS_PREFECT_API_URL is not set; not bridging")
        return
    async with client_for(settings) as client:
        await Bridge(redis, settings, client, keys=keys).run(stopping)
