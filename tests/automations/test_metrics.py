"""Metrics, /healthz and /readyz of a real ``serve``: real Redis, a real webhook sink, scraped
with real HTTP requests; Redis stopped and started under it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from automations.errors import AutomationsError
from automations.events import Event
from automations.health import Health, health_server
from automations.keys import Keys
from automations.metrics import PREFIX, Metrics, current_metrics, metrics_scope
from automations.models import Automation
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import Publisher
from bench.redis_server import RedisServer, free_port
from tests.sinks import HttpSink
from tests.wait import wait_until

Samples = list[Sample]
EXE = str(Path(sys.executable).with_name("automations"))


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    assert families
    names = [f.name for f in families] + [s.name for f in families for s in f.samples]
    assert all(name.startswith(PREFIX) for name in names), [
        n for n in names if not n.startswith(PREFIX)]
    return [s for f in families for s in f.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def status(http: httpx.AsyncClient, path: str) -> int:
    return (await http.get(path)).status_code


def answers(http: httpx.AsyncClient, path: str, code: int
            ) -> Callable[[], bool | Awaitable[bool]]:
    async def check() -> bool:
        return await status(http, path) == code
    return check


def when(check: Callable[[Samples], bool], http: httpx.AsyncClient) -> Callable[[], object]:
    async def scraped() -> Samples | None:
        samples = await scrape(http)
        return samples if check(samples) else None
    return scraped


async def test_serve_exposes_metrics_health_and_readiness(
    own_redis: RedisServer, settings: Settings, http_sink: HttpSink,
) -> None:
    port = free_port()
    settings = settings.model_copy(update={"redis_url": own_redis.url, "metrics_port": port})
    keys = Keys.from_settings(settings)
    client = aioredis.Redis.from_url(own_redis.url)
    await AutomationStore(client, keys).apply([Automation.model_validate({
        "name": "disk-full", "trigger": {"posture": "Reactive", "expect": ["disk.full"]},
        "actions": [{"type": "call-webhook", "url": http_sink.url("/hook")}]})])
    stopping = anyio.Event()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(serve, settings, stopping=stopping))
                await wait_until(answers(http, "/readyz", 200), tolerate=(httpx.HTTPError,))
                await Publisher(client, settings).publish([
                    Event(event="disk.full", resource={"prefect.resource.id": f"host-{i}"})
                    for i in range(3)])
                await client.xadd(keys.events, {"data": b"{not json", "id": b"bad-1"})
                await http_sink.wait_for(1, "/hook", timeout=15)

                samples = await wait_until(when(lambda s: value(
                    s, "automations_actions_total", action="call-webhook",
                    outcome="executed") >= 1, http))
                assert isinstance(samples, list)
                assert value(samples, "automations_events_total", outcome="evaluated") >= 3
                assert value(samples, "automations_events_total", outcome="rejected") == 1
                assert value(samples, "automations_firings_total", automation="disk-full") >= 1
                assert value(samples, "automations_event_to_firing_seconds_count") >= 1
                assert value(samples, "automations_action_duration_seconds_count",
                             action="call-webhook") >= 1
                dead_events = keys.dead(keys.events)
                assert value(samples, "automations_dead_letters_total", stream=dead_events) == 1
                assert value(samples, "automations_dead_letter_entries", stream=dead_events) == 1
                assert value(samples, "automations_redis_rtt_seconds_count") >= 1
                assert value(samples, "automations_redis_up") == 1
                assert any(s.name == "automations_consumer_pending"
                           and s.labels == {"stream": keys.events, "group": "engine"}
                           for s in samples)
                assert any(s.name == "automations_consumer_lag"
                           and s.labels["stream"] == keys.partition(0).firings for s in samples)
                assert await status(http, "/healthz") == 200

                await anyio.to_thread.run_sync(own_redis.stop)
                await wait_until(answers(http, "/readyz", 503))
                samples = await scrape(http)  # Redis away: the scrape still answers
                assert value(samples, "automations_redis_up") == 0
                assert not [s for s in samples if s.name == "automations_consumer_pending"]
                assert await status(http, "/healthz") == 200
                await anyio.to_thread.run_sync(own_redis.start)
                await wait_until(answers(http, "/readyz", 200), timeout=15)
                stopping.set()
            with pytest.raises(httpx.ConnectError):  # stopped with the services
                await http.get("/healthz")
    finally:
        await client.aclose()


async def test_a_port_in_use_is_a_clear_error(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    health = Health(Metrics(), client)
    try:
        async with health_server(health, "127.0.0.1", 0) as port:
            with pytest.raises(AutomationsError, match=f"cannot listen on 127.0.0.1:{port}"):
                async with health_server(health, "127.0.0.1", port):
                    pass
    finally:
        await client.aclose()


async def test_a_scrape_with_redis_unreachable_succeeds_without_group_numbers() -> None:
    metrics = Metrics()
    metrics.consumer_pending.labels("s", "g").set(5)
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        await metrics.read_groups(client, ["s"], ["dead:s"])
        assert not await metrics.ping(client)
    finally:
        await client.aclose()
    text = metrics.exposition().decode()
    assert "automations_redis_up 0.0" in text
    assert 'automations_consumer_pending{group="g",stream="s"}' not in text


def test_each_scope_counts_on_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    with metrics_scope(first):
        assert current_metrics() is first
        with metrics_scope(second):
            current_metrics().fired("a")
        current_metrics().fired("a")
        current_metrics().fired("a")
    assert current_metrics() is not first  # outside a scope: a private one
    assert first.firings.labels("a")._value.get() == 2
    assert second.firings.labels("a")._value.get() == 1


def test_events_handled_splits_a_batch_by_outcome() -> None:
    metrics = Metrics()
    metrics.events_handled(10, 7, 1)
    metrics.events_handled(5, 6, 0)  # released followers of earlier batches: never negative
    assert metrics.events.labels("evaluated")._value.get() == 13
    assert metrics.events.labels("skipped")._value.get() == 2
    assert metrics.events.labels("rejected")._value.get() == 1


async def test_the_worker_serves_metrics_on_a_free_port_it_logs(
    redis_url: str, prefix: str, procs: list[subprocess.Popen[str]],
) -> None:
    env = {**os.environ, "AUTOMATIONS_REDIS_URL": redis_url, "AUTOMATIONS_PREFIX": prefix,
           "AUTOMATIONS_METRICS_PORT": "0", "AUTOMATIONS_LOG_FORMAT": "json"}
    proc = subprocess.Popen([EXE, "worker"], env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    procs.append(proc)
    assert proc.stderr is not None
    line = await anyio.to_thread.run_sync(proc.stderr.readline)
    found = re.search(r"metrics on (http://127\.0\.0\.1:\d+)/metrics", line)
    assert found, line
    keys = Keys(prefix)
    async with httpx.AsyncClient(base_url=found.group(1), timeout=5) as http:
        await wait_until(answers(http, "/readyz", 200), tolerate=(httpx.HTTPError,))
        samples = await wait_until(when(lambda s: any(
            x.name == "automations_consumer_pending" and x.labels["stream"] == keys.runs
            for x in s), http))
        assert samples
    proc.send_signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(proc.wait, 20) == 0
