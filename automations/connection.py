"""Builds the ``redis.asyncio`` client every service uses."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import parse_url
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

from automations.settings import Settings

DEFAULT_URL = "redis://localhost:6379/0"
EMBEDDED_STATE = "embedded-redis.json"  # written by `automations serve` (automations.embedded)
RETRIES = 3  # per command, on a fresh connection each time (see ``_retry``)
RETRIED: tuple[type[redis.exceptions.RedisError], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
EMBEDDED_PORT = "redis.port"  # the embedded Redis's port, kept across restarts of `serve`
# What a lost connection looks like from redis-py (plus BUSY LOADING after a restart).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def embedded_url(data_dir: Path) -> str | None:
    """URL of the embedded Redis a running `automations serve` started in ``data_dir``."""
    try:
        state = json.loads((data_dir / EMBEDDED_STATE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not pid_alive(state.get("pid")):
        return None
    url = state.get("url")
    return url if isinstance(url, str) else None


def recorded_port(data_dir: Path) -> int | None:
    """The port the embedded Redis of ``data_dir`` uses (running or not), if it ever ran."""
    try:
        port = int((data_dir / EMBEDDED_PORT).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def loopback_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    return [(host, int(port)) for host, _, port in
            (a.strip().rpartition(":") for a in (settings.redis_sentinels or "").split(","))]


def redis_url(settings: Settings) -> str:
    """The configured URL, else a running embedded Redis in ``data_dir``, else localhost (or,
    with ``probe_localhost`` off, the embedded Redis's recorded address)."""
    if settings.redis_sentinels:  # a name for messages; clients come from `connect`
        return f"redis+sentinel://{settings.redis_sentinels}/{settings.redis_sentinel_master}"
    if settings.redis_url:
        return settings.redis_url
    running = embedded_url(settings.data_dir)
    if running is not None:
        return running
    port = None if settings.probe_localhost else recorded_port(settings.data_dir)
    return DEFAULT_URL if port is None else loopback_url(port)


def unreachable_hint(settings: Settings) -> str:
    """Why no URL was configured, for the "cannot reach Redis" message ("" if one was)."""
    if settings.redis_configured:
        return ""
    return (f" (AUTOMATIONS_REDIS_URL is unset and no `automations serve` runs an embedded "
            f"Redis in {settings.data_dir})")


def _retry() -> Retry:
    """A command that meets a dead connection (Redis restarted, a failover, an idle
    connection cut) is sent again on a fresh one, a few times with a growing delay: redis-py
    pools made by ``from_url`` retry nothing, so after a restart every pooled connection would
    fail one command each. Re-sending is safe here: events carry ids the engine dedupes, and
    every script marks its work done in the same atomic step."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES,
                 supported_errors=RETRIED)


def _sync_retry() -> SyncRetry:
    return SyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES,
                     supported_errors=RETRIED)


def _master_kwargs(settings: Settings) -> dict[str, Any]:
    """Credentials, database and TLS of the master, from ``redis_url`` when given."""
    if not settings.redis_url:
        return {}
    kwargs = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    return {k: v for k, v in kwargs.items() if k not in ("host", "port", "path")}


def connect(settings: Settings, *, url: str | None = None) -> aioredis.Redis:
    """A pooled client; bytes responses (decode in the caller, orjson is faster). With
    sentinels, a client of the current master that finds the new one after a failover."""
    common: dict[str, Any] = {"decode_responses": False, "socket_connect_timeout": 5,
                              "health_check_interval": 30, "retry": _retry()}
    if settings.redis_sentinels and url is None:
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            sentinel_addresses(settings), socket_connect_timeout=5)
        master: aioredis.Redis = sentinel.master_for(
            settings.redis_sentinel_master, **{**_master_kwargs(settings), **common})
        return master
    return aioredis.Redis.from_url(url or redis_url(settings), **common)


def connect_sync(settings: Settings) -> redis.Redis:
    """The synchronous ``connect`` (for ``emit()`` from scripts and flows)."""
    common: dict[str, Any] = {"socket_connect_timeout": 5, "retry": _sync_retry()}
    if settings.redis_sentinels:
        sentinel = SyncSentinel(  # type: ignore[no-untyped-call]
            sentinel_addresses(settings), socket_connect_timeout=5)
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_master, **{**_master_kwargs(settings), **common})
        return master
    return redis.Redis.from_url(redis_url(settings), **common)


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
