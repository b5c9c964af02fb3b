"""Every Prometheus metric of a process, defined here and nowhere else.

The metrics live on a ``Metrics`` object with its own registry, not on prometheus-client's
global one, so that tests, benchmarks and several services in one process each count their
own. ``serve`` and ``worker`` make one and put it in scope (``metrics_scope``) around their
services; the engine, announcer, dispatcher and stream consumers take it from there when they
are built (``current_metrics``), or get a private one outside any scope (nobody scrapes it).

Hot-path cost stays small: the engine adds its event counts once per batch, firings and
actions are counted where they are logged anyway, and the consumer-group gauges are read from
Redis (XINFO GROUPS, a few streams) when ``/metrics`` is scraped, not kept up to date.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import anyio
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from automations.connection import CONNECTION_ERRORS

PREFIX = "automations_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0)
ACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1.0)
GROUPS_TIMEOUT_S = 1.0  # a scrape waits at most this long for Redis

# A probe or a scrape reports these as Redis being away (LOADING, NOPERM...), never raises.
REDIS_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.exceptions.RedisError)

_SCOPE: ContextVar[Metrics | None] = ContextVar("automations_metrics", default=None)


class Metrics:
    """The metrics of one process (or one test), on ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "automations_events", "Events-stream entries the engine handled, by outcome: "
            "evaluated (against the triggers), skipped (a duplicate, or held for the event it "
            "follows) or rejected (dead-lettered).", ["outcome"], registry=r)
        self._evaluated = self.events.labels("evaluated")
        self._skipped = self.events.labels("skipped")
        self._rejected = self.events.labels("rejected")
        self.firings = Counter(
            "automations_firings", "Firings announced, per automation name.", ["automation"],
            registry=r)
        self.event_to_firing = Histogram(
            "automations_event_to_firing_seconds", "From an event's `occurred` to the outbox "
            "entry of the firings it caused (once per event; clocks of the producer and of "
            "Redis).",
            buckets=LATENCY_BUCKETS, registry=r)
        self.actions = Counter(
            "automations_actions", "Action attempts by action type and outcome (executed, "
            "retrying, gave-up, skipped).", ["action", "outcome"], registry=r)
        self.action_duration = Histogram(
            "automations_action_duration_seconds", "Time of one action attempt (render and "
            "execute), by action type.", ["action"], buckets=ACTION_BUCKETS, registry=r)
        self.dead_letters = Counter(
            "automations_dead_letters", "Entries written to a dead-letter stream, per dead "
            "stream.", ["stream"], registry=r)
        self.consumer_lag = Gauge(
            "automations_consumer_lag", "Entries of a stream not yet delivered to a consumer "
            "group (XINFO GROUPS lag; read at scrape time).", ["stream", "group"], registry=r)
        self.consumer_pending = Gauge(
            "automations_consumer_pending", "Entries delivered to a consumer group and not yet "
            "acknowledged (read at scrape time).", ["stream", "group"], registry=r)
        self.redis_rtt = Histogram(
            "automations_redis_rtt_seconds", "Round trip of a PING to Redis (every few "
            "seconds).", buckets=RTT_BUCKETS, registry=r)
        self.dead_letter_entries = Gauge(
            "automations_dead_letter_entries", "Entries in a dead-letter stream now (XLEN; "
            "read at scrape time).", ["stream"], registry=r)
        self.redis_up = Gauge(
            "automations_redis_up", "1 when the last PING or scrape-time read of Redis "
            "succeeded, else 0.", registry=r)
        self.prefect_events = Counter(
            "automations_prefect_bridge_events", "Prefect events the bridge handled, by path "
            "(live: the websocket; reconcile: the REST pass) and outcome (published, "
            "duplicate, echo: written back by this engine, invalid).", ["path", "outcome"],
            registry=r)
        self.prefect_lag = Gauge(
            "automations_prefect_bridge_lag_seconds", "From the `occurred` of the latest "
            "event the bridge published live to its publication.", registry=r)
        self.prefect_cursor_age = Gauge(
            "automations_prefect_bridge_cursor_age_seconds", "How far behind now the bridge's "
            "reconciled watermark is (grows while Prefect is unreachable).", registry=r)
        self.prefect_connected = Gauge(
            "automations_prefect_bridge_connected", "1 while the bridge's websocket to "
            "Prefect is subscribed.", registry=r)
        self.prefect_reconciles = Counter(
            "automations_prefect_bridge_reconciles", "Reconciliation passes, by outcome "
            "(completed, failed).", ["outcome"], registry=r)
        self.prefect_written_back = Counter(
            "automations_prefect_written_back", "Automation events written back to Prefect.",
            registry=r)
        ProcessCollector(namespace="automations", registry=r)
        self._reading = anyio.Lock()
        self._firings: dict[str, Counter] = {}

    def __repr__(self) -> str:
        return f"Metrics({len(list(self.registry.collect()))} families)"

    # -- what the services report -----------------------------------------------------------
    def events_handled(self, total: int, evaluated: int, rejected: int) -> None:
        """One engine batch: ``total`` entries, of which ``evaluated`` and ``rejected``."""
        self._evaluated.inc(evaluated)
        self._rejected.inc(rejected)
        skipped = total - evaluated - rejected
        if skipped > 0:
            self._skipped.inc(skipped)

    def fired(self, automation: str, count: int = 1) -> None:
        child = self._firings.get(automation)
        if child is None:  # bounded by the number of automations
            child = self._firings[automation] = self.firings.labels(automation)
        child.inc(count)

    def event_fired(self, latency_s: float) -> None:
        """An event caused firings ``latency_s`` after it occurred (observed once per event,
        however many automations it fired)."""
        self.event_to_firing.observe(max(latency_s, 0.0))

    def action_done(self, action: str, outcome: str, seconds: float | None = None) -> None:
        self.actions.labels(action, outcome).inc()
        if seconds is not None:
            self.action_duration.labels(action).observe(seconds)

    def dead_lettered(self, dead_stream: str, count: int = 1) -> None:
        self.dead_letters.labels(dead_stream).inc(count)

    # -- read from Redis ----------------------------------------------------------------------
    async def ping(self, client: aioredis.Redis, timeout_s: float = GROUPS_TIMEOUT_S) -> bool:
        """One timed PING (observed in ``automations_redis_rtt_seconds``); False when Redis
        does not answer within ``timeout_s``."""
        started = time.perf_counter()
        ok = False
        with anyio.move_on_after(timeout_s):
            try:
                await client.ping()
                ok = True
            except REDIS_ERRORS:
                ok = False
        if ok:
            self.redis_rtt.observe(time.perf_counter() - started)
        self.redis_up.set(1 if ok else 0)
        return ok

    async def read_groups(self, client: aioredis.Redis, streams: Sequence[str],
                          dead_streams: Sequence[str] = ()) -> None:
        """Refresh the lag and pending gauges (XINFO GROUPS of ``streams``) and the lengths of
        ``dead_streams``: one pipelined round trip, at most ``GROUPS_TIMEOUT_S``, one at a
        time however many scrapers. With Redis away the gauges are cleared (no stale numbers)
        and the scrape still succeeds."""
        async with self._reading:
            replies: list[Any] | None = None
            with anyio.move_on_after(GROUPS_TIMEOUT_S):
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for stream in streams:
                            pipe.xinfo_groups(stream)
                        for dead in dead_streams:
                            pipe.xlen(dead)
                        replies = await pipe.execute(raise_on_error=False)
                except REDIS_ERRORS:
                    replies = None
            self.consumer_lag.clear()
            self.consumer_pending.clear()
            self.dead_letter_entries.clear()
            self.redis_up.set(0 if replies is None else 1)
            if replies is None:
                return
            for stream, groups in zip(streams, replies, strict=False):
                for group, lag, pending in _groups(groups):
                    self.consumer_pending.labels(stream, group).set(pending)
                    if lag is not None:
                        self.consumer_lag.labels(stream, group).set(lag)
            for dead, length in zip(dead_streams, replies[len(streams):], strict=True):
                if isinstance(length, int):
                    self.dead_letter_entries.labels(dead).set(length)

    def exposition(self) -> bytes:
        """The text format of every metric on the registry."""
        return generate_latest(self.registry)


def _groups(reply: Any) -> list[tuple[str, int | None, int]]:
    """``(group, lag, pending)`` per group of an XINFO GROUPS reply; none for an error (no
    such stream yet). ``lag`` is None when Redis cannot tell (after deletions, or before
    Redis 7)."""
    if isinstance(reply, Exception):
        return []
    out = []
    for info in reply:
        name = info["name"]
        group = name.decode() if isinstance(name, bytes) else str(name)
        lag = info.get("lag")
        out.append((group, None if lag is None else int(lag), int(info["pending"])))
    return out


def current_metrics() -> Metrics:
    """The metrics of the ``serve``/``worker`` this task runs in; else a private object."""
    return _SCOPE.get() or Metrics()


@contextmanager
def metrics_scope(metrics: Metrics) -> Iterator[Metrics]:
    """Components built in this task (and the tasks it starts from now on) count on
    ``metrics``."""
    token = _SCOPE.set(metrics)
    try:
        yield metrics
    finally:
        _SCOPE.reset(token)
