"""Session Redis on a free port, a fresh key prefix per test, and settings pointing at both."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from automations.dispatch.dispatcher import Dispatcher
from automations.keys import Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from bench.redis_server import RedisServer
from tests.automations.engine_harness import Clock, Harness
from tests.quick_settings import quick_settings
from tests.sinks import http_sink as http_sink  # fixtures of real HTTP/SMTP sinks
from tests.sinks import smtp_sink as smtp_sink


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--redis-url", default=None, help="Use this Redis instead of starting one.")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> str:
    url: str | None = request.config.getoption("--redis-url")
    return url or redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server for tests that kill or restart Redis."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path) -> Settings:
    return quick_settings(redis_url, prefix, tmp_path / "data")


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


# The dispatcher tests' fixtures (a module may override ``fast``).
@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings with quick retries and short timeouts."""
    return settings.model_copy(update={
        "action_retry_base_s": 0.05, "action_retry_max_s": 0.2, "action_timeout_s": 3.0,
        "action_max_attempts": 3, "action_retry_poll_s": 0.05,
    })


@pytest.fixture
def store(redis: aioredis.Redis, keys: Keys) -> AutomationStore:
    return AutomationStore(redis, keys)


@pytest.fixture
async def dispatcher(
    redis: aioredis.Redis, fast: Settings, keys: Keys
) -> AsyncIterator[Dispatcher]:
    async with Dispatcher(redis, fast, ports=build_ports(redis, fast, keys), keys=keys) as d:
        yield d


@pytest.fixture
def clock() -> Clock:
    """The engine's clock in harness tests, moved by hand."""
    return Clock()


@pytest.fixture
def h(redis: aioredis.Redis, settings: Settings, clock: Clock) -> Harness:
    """One engine on the test's prefix, driven batch by batch (see engine_harness)."""
    return Harness(redis, settings, clock)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test starts; any still running at the end are killed and reaped."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
