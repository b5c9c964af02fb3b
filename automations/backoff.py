"""The one retry policy for Redis outages: capped exponential delays, logged once per outage.

Every loop that must outlive Redis going away (consumers, the timer, the scheduler, hot
reload, the dispatcher's retry queue, the flow-events sink, the worker, start-up) holds a
``Backoff``: ``await wait(exc)`` after a failure, ``recovered()`` after a success. The first
failure of an outage is logged at WARNING, the recovery once with how long it took; the tries
in between are silent, so one outage is two lines, not dozens. ``retry`` runs one call under
the same policy until it succeeds or a deadline passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from automations.connection import CONNECTION_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_S = 0.05
CAP_S = 5.0


class Backoff:
    """Delays of ``first_s``, doubling up to ``cap_s``, for one named loop."""

    def __init__(self, what: str, *, first_s: float = FIRST_S, cap_s: float = CAP_S,
                 logger: logging.Logger = log) -> None:
        self.what = what
        self.first_s = first_s
        self.cap_s = cap_s
        self.log = logger
        self.attempts = 0
        self.since: float | None = None  # when the outage now logged began

    def __repr__(self) -> str:
        return f"Backoff({self.what!r}, attempts={self.attempts})"

    @property
    def failing(self) -> bool:
        return self.attempts > 0

    def next_delay(self, exc: BaseException, *, outage: bool = True) -> float:
        """Count a failure (logged when it starts an outage); the delay before the next try.

        ``outage=False``: a failure the caller reports itself (a bug, with its traceback); it
        still lengthens the delays, so a failure that repeats does not spin or flood the log.
        """
        if outage and self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s: Redis unreachable (%s: %s); retrying with backoff", self.what,
                             type(exc).__name__, exc)
        self.attempts += 1
        delay: float = min(self.first_s * 2.0 ** (self.attempts - 1), self.cap_s)
        return delay

    async def wait(self, exc: BaseException, stopping: anyio.Event | None = None, *,
                   outage: bool = True) -> None:
        """Sleep the next delay (returning early once ``stopping`` is set)."""
        delay = self.next_delay(exc, outage=outage)
        if stopping is None:
            await anyio.sleep(delay)
            return
        with anyio.move_on_after(delay):
            await stopping.wait()

    def recovered(self) -> None:
        """A success: ends the outage (logged once) and resets the delays."""
        if self.since is not None:
            self.log.warning("%s: Redis reachable again after %.1f s", self.what,
                             time.monotonic() - self.since)
        self.reset()

    def reset(self) -> None:
        """Back to the first delay without a recovery line (no outage was logged, or the
        caller reports the success itself)."""
        self.attempts = 0
        self.since = None


async def retry(call: Callable[[], Awaitable[T]], backoff: Backoff, *,
                deadline_s: float | None = None,
                errors: tuple[type[BaseException], ...] = CONNECTION_ERRORS) -> T:
    """``await call()`` until it does not raise one of ``errors``; after ``deadline_s`` the
    last error is raised instead of another try."""
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    while True:
        try:
            result = await call()
        except errors as exc:
            delay = backoff.next_delay(exc)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            await anyio.sleep(delay)
            continue
        backoff.recovered()
        return result
