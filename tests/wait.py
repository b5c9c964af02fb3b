"""Waiting for a condition with a deadline, instead of sleeping a guessed time."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import anyio
import pytest
import redis.asyncio as aioredis

T = TypeVar("T")

POLL_S = 0.02


async def wait_until(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    poll: float = POLL_S,
    tolerate: tuple[type[BaseException], ...] = (),
    what: str | None = None,
) -> T:
    """Call ``check`` (sync or async) until it returns something truthy, and return that; an
    AssertionError naming ``what`` after ``timeout`` seconds. An exception of a ``tolerate``
    type counts as "not yet" (a connection error while Redis restarts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
            if inspect.isawaitable(found):
                found = await found
        except tolerate:
            found = None
        if found:
            return cast(T, found)
        if time.monotonic() > deadline:
            name = what or getattr(check, "__name__", "<lambda>").replace("<lambda>", "condition")
            raise AssertionError(f"{name} not met within {timeout:g} s")
        await anyio.sleep(poll)


async def logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 10.0) -> None:
    """Until a captured log line contains ``text``."""
    await wait_until(lambda: text in caplog.text, timeout=timeout, what=f"log line {text!r}")


async def acknowledged(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """Whether ``group`` has read and acknowledged every entry ``stream`` holds now (so all
    that handling them does is done)."""
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except aioredis.ResponseError:  # no stream yet
        return False
    last: Any = await redis.xrevrange(stream, count=1)
    for info in groups:
        if info["name"] in (group, group.encode()):
            read_all = not last or info["last-delivered-id"] == last[0][0]
            return bool(read_all and info["pending"] == 0)
    return False
