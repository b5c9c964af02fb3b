"""Builds the ``redis.asyncio`` client every service uses."""

from __future__ import annotations

import redis.asyncio as aioredis

from automations.settings import Settings

DEFAULT_URL = "redis://localhost:6379/0"


def redis_url(settings: Settings) -> str:
    return settings.redis_url or DEFAULT_URL


def connect(settings: Settings, *, url: str | None = None) -> aioredis.Redis:
    """A pooled client; bytes responses (decode in the caller, orjson is faster)."""
    return aioredis.Redis.from_url(
        url or redis_url(settings),
        decode_responses=False,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
