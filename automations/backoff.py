"""The one retry policy for Redis outages: capped exponential delays, an outage logged once.

Every loop that must outlive Redis going away (consumers, the timer, the scheduler, hot
reload, the dispatcher's retry queue, the flow-events sink, the worker, start-up) holds a
``Backoff``: ``await wait(exc)`` after a failure, ``recovered()`` after a success. ``retry``
runs one call under the same policy until it succeeds or a deadline passes.

What is logged is decided by an ``Outage``, shared by every loop of one component (a service
of ``serve``, or the worker: ``outage_scope`` around it; a loop outside any scope has its own):
one WARNING when the first loop fails, a reminder at growing intervals (30 s, 60 s, 120 s...)
while it lasts, and one INFO when a loop gets through again. One outage of a whole ``serve``
is then two lines per service, however many loops retried how often. Failures in the first
``SETTLE_S`` after a recovery are the tail of that outage (pooled connections to the old
server fail once each): they start a new outage line only if they go on past it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import anyio

from automations.connection import CONNECTION_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_S = 0.05
CAP_S = 5.0
REMIND_FIRST_S = 30.0  # the first "still unreachable" reminder; then each interval doubles
REMIND_MAX_S = 3600.0
SETTLE_S = 5.0  # after a recovery, failures are logged only once they last this long

_SCOPE: ContextVar[Outage | None] = ContextVar("automations_outage_scope", default=None)


class Outage:
    """One component's view of Redis being away, shared by its loops (see the module doc)."""

    def __init__(self, name: str, logger: logging.Logger = log, *,
                 remind_first_s: float = REMIND_FIRST_S, settle_s: float = SETTLE_S) -> None:
        self.name = name
        self.log = logger
        self.remind_first_s = remind_first_s
        self.settle_s = settle_s
        self.since: float | None = None  # when the outage began (logged or not yet)
        self.logged = False
        self._quiet_until = 0.0  # a recovery's settling time
        self._every = remind_first_s
        self._remind_at = 0.0

    def __repr__(self) -> str:
        return f"Outage({self.name!r}, since={self.since})"

    def failed(self, exc: BaseException, what: str) -> None:
        """A loop (``what``) could not reach Redis: starts the outage or reminds of it."""
        now = time.monotonic()
        if self.since is None:
            self.since, self.logged = now, False
        if not self.logged:
            if now < self._quiet_until:
                return  # settling after a recovery
            self.logged, self._every = True, self.remind_first_s
            self._remind_at = now + self._every
            where = "" if what == self.name else f" in {what}"
            self.log.warning("%s: Redis unreachable (%s: %s)%s; retrying with backoff",
                             self.name, type(exc).__name__, exc, where)
        elif now >= self._remind_at:
            self._every = min(self._every * 2, REMIND_MAX_S)
            self._remind_at = now + self._every
            self.log.warning("%s: Redis still unreachable after %.0f s (%s: %s)", self.name,
                             now - self.since, type(exc).__name__, exc)

    def recovered(self) -> None:
        """A loop got through: the outage, if one was logged, ends (one INFO line)."""
        if self.since is not None:
            now = time.monotonic()
            if self.logged:
                self.log.info("%s: Redis reachable again after %.1f s", self.name,
                              now - self.since)
                self._quiet_until = now + self.settle_s
            self.since, self.logged = None, False


def current_outage() -> Outage | None:
    """The outage shared by the component this task runs in (``outage_scope``), if any."""
    return _SCOPE.get()


@contextmanager
def outage_scope(name: str, logger: logging.Logger = log) -> Iterator[Outage]:
    """Every ``Backoff`` made in this task (and the tasks it starts from now on) reports to
    one ``Outage`` named ``name``."""
    outage = Outage(name, logger)
    token = _SCOPE.set(outage)
    try:
        yield outage
    finally:
        _SCOPE.reset(token)


class Backoff:
    """Delays of ``first_s``, doubling up to ``cap_s``, for one named loop. Its outage lines
    go to ``outage``, else to its component's (``outage_scope``), else to its own."""

    def __init__(self, what: str, *, first_s: float = FIRST_S, cap_s: float = CAP_S,
                 logger: logging.Logger = log, outage: Outage | None = None) -> None:
        self.what = what
        self.first_s = first_s
        self.cap_s = cap_s
        self.log = logger
        self.outage = outage or current_outage() or Outage(what, logger)
        self.attempts = 0
        self.since: float | None = None  # when this loop's failures began

    def __repr__(self) -> str:
        return f"Backoff({self.what!r}, attempts={self.attempts})"

    @property
    def failing(self) -> bool:
        return self.attempts > 0

    def next_delay(self, exc: BaseException, *, outage: bool = True) -> float:
        """Count a failure (reported to the outage); the delay before the next try.

        ``outage=False``: a failure the caller reports itself (a bug, with its traceback); it
        still lengthens the delays, so a failure that repeats does not spin or flood the log.
        """
        if outage:
            if self.since is None:
                self.since = time.monotonic()
            self.outage.failed(exc, self.what)
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
        """A success: ends the outage this loop was part of (logged once) and resets."""
        if self.since is not None:
            self.outage.recovered()
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
