"""``serve``: services in one task group, the placeholder engine, draining and its deadline."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from automations.cli.serve_cmd import unwrap
from automations.errors import AutomationsError
from automations.events import Event
from automations.keys import ENGINE_GROUP, Keys
from automations.service import SERVICES, ServiceContext, select, serve
from automations.settings import Settings
from automations.streams.publish import Publisher
from bench.redis_server import free_port
from tests.wait import acknowledged, logged, wait_until


def test_the_services_are_registered() -> None:
    assert set(SERVICES) == {"engine", "timer", "dispatcher", "scheduler", "bridge", "console"}


def test_select_refuses_unknown_names() -> None:
    assert list(select(["timer", "engine"], SERVICES)) == ["timer", "engine"]
    assert select(None, SERVICES) == SERVICES
    with pytest.raises(AutomationsError, match="unknown service enigne; choose from engine"):
        select(["enigne"], SERVICES)


async def test_services_share_a_context_and_return_when_stopping(settings: Settings) -> None:
    seen: list[tuple[str, ServiceContext]] = []
    stopping = anyio.Event()

    async def make(name: str, ctx: ServiceContext) -> None:
        seen.append((name, ctx))
        if len(seen) == 2:
            stopping.set()
        await ctx.stopping.wait()

    async def a(ctx: ServiceContext) -> None:
        await make("a", ctx)

    async def b(ctx: ServiceContext) -> None:
        await make("b", ctx)

    with anyio.fail_after(5):
        await serve(settings, services={"a": a, "b": b, "c": b}, only=["a", "b"],
                    stopping=stopping)
    assert sorted(name for name, _ in seen) == ["a", "b"]
    ctx = seen[0][1]
    assert ctx is seen[1][1]
    assert ctx.keys == Keys.from_settings(settings) and ctx.settings is settings


async def test_the_engine_service_consumes_and_acks_events(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await Publisher(redis, settings).publish(
        [Event(event="e", resource={"prefect.resource.id": "r"}) for _ in range(5)]
    )
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(settings, ["engine"], stopping=stopping))
        await wait_until(lambda: acknowledged(redis, keys.events, ENGINE_GROUP))
        stopping.set()


async def test_a_service_that_ignores_stopping_is_cancelled_after_the_timeout(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"shutdown_timeout_s": 0.2})
    stopping = anyio.Event()
    cancelled = []

    async def stubborn(ctx: ServiceContext) -> None:
        ctx.stopping.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(True)

    with anyio.fail_after(5):
        await serve(settings, services={"stubborn": stubborn}, stopping=stopping)
    assert cancelled == [True]


def test_serve_cli_reports_our_errors_from_inside_the_task_group() -> None:
    inner = AutomationsError("Redis 5.0 is too old")
    group = BaseExceptionGroup("x", [ExceptionGroup("y", [ValueError("a"), inner])])
    assert unwrap(group) is inner
    bug = ExceptionGroup("z", [ValueError("b")])
    assert unwrap(bug) is bug


async def test_serve_waits_for_redis_and_stops_cleanly_while_waiting(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    stopping = anyio.Event()
    started = []

    async def never(ctx: ServiceContext) -> None:
        started.append(ctx)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(down, services={"x": never}, stopping=stopping))
        await logged(caplog, "waiting for Redis", timeout=5)
        # Nothing to wait for: the retries are silent; this is time for several of them.
        await anyio.sleep(0.3)
        stopping.set()
    assert started == []
    assert caplog.text.count("waiting for Redis") == 1
