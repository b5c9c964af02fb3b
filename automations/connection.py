"""Builds the ``redis.asyncio`` client every service uses."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions

from automations.settings import Settings

DEFAULT_URL = "redis://localhost:6379/0"
EMBEDDED_STATE = "embedded-redis.json"  # written by `automations serve` (automations.embedded)
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


def redis_url(settings: Settings) -> str:
    """The configured URL, else a running embedded Redis in ``data_dir``, else localhost."""
    return settings.redis_url or embedded_url(settings.data_dir) or DEFAULT_URL


def connect(settings: Settings, *, url: str | None = None) -> aioredis.Redis:
    """A pooled client; bytes responses (decode in the caller, orjson is faster)."""
    return aioredis.Redis.from_url(
        url or redis_url(settings),
        decode_responses=False,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
