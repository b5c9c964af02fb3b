"""Keeping one failure to itself: real causes instead of "unhandled errors in a TaskGroup".

anyio wraps whatever escapes a task group, the host task's own exception included, in an
``ExceptionGroup``; logged or dead-lettered as is, that says nothing ("ExceptionGroup: unhandled
errors in a TaskGroup (1 sub-exception)") and, worse, it cancels the group's other tasks.
``beside`` runs a body next to background loops and re-raises the body's exception unwrapped;
``leaves`` and ``describe`` turn any group into its real causes, one line each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import anyio
import redis.exceptions

from automations.connection import CONNECTION_ERRORS

T = TypeVar("T")

TRANSIENT_REPLIES = ("OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
                     "LOADING")
"""Error replies that mean "Redis cannot serve us right now" (memory full, failover, loading)."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, groups flattened (``[exc]`` for a plain one)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def describe(exc: BaseException) -> str:
    """``Type: message`` of each real cause (groups unwrapped), ``; ``-separated."""
    return "; ".join(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                     for e in leaves(exc))


def redis_unavailable(exc: BaseException) -> bool:
    """Redis unreachable or unable to serve for now: worth retrying the same write later."""
    found = leaves(exc)
    return all(isinstance(e, CONNECTION_ERRORS) or (
        isinstance(e, redis.exceptions.ResponseError) and str(e).startswith(TRANSIENT_REPLIES))
        for e in found)


def first_cause(exc: BaseException) -> BaseException:
    """The first real cause of ``exc`` (itself when it is not a group)."""
    return leaves(exc)[0]


async def beside(background: Sequence[Callable[[], Coroutine[Any, Any, None]]],
                 body: Callable[[], Awaitable[T]]) -> T:
    """``await body()`` while ``background`` loops run (cancelled when the body ends). The
    body's exception is raised as it is, not wrapped in a group; the loops must not raise."""
    result: list[T] = []
    error: list[Exception] = []
    async with anyio.create_task_group() as tg:
        for loop in background:
            tg.start_soon(loop)
        try:
            result.append(await body())
        except Exception as exc:
            error.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if error:
        raise error[0]
    return result[0]
