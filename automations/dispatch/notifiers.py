"""One Apprise object per target URL, reused across notifications, and outcome classification.

Building an ``Apprise`` object parses the URL and loads its plugin, which is slow; the pool
keeps one per URL (LRU-bounded) for the life of a dispatcher, which owns and clears it. Apprise
reports failures only through log lines, so ``classify`` reads the per-service log of one call:
``error=<status>`` becomes ``classify_http``, connection errors and timeouts are transient. A
timeout (``Reason.TIMEOUT``) is kept apart from a failure to connect: only after a timeout may
the receiver have the notification (``executors/notify.py`` does not send it again).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import apprise

from actions.outcome import PermanentError, Reason, TransientError, classify_http

log = logging.getLogger(__name__)

_STATUS = re.compile(r"error=(\d{3})")
_CONNECTION = re.compile(r"connection error|socket exception|timed out|timeout", re.IGNORECASE)
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_BEFORE_SENDING = re.compile(r"connect timeout|ConnectTimeout|connection to \S+ timed out",
                             re.IGNORECASE)
"""A timeout while connecting is a definite failure (nothing was sent); any other timeout may
have happened after the receiver got the notification."""


@dataclass(slots=True)
class Delivery:
    """What one Apprise call to one target said: success and its log lines (unredacted)."""

    ok: bool
    timed_out: bool = False
    log: list[str] = field(default_factory=list)


class NotifierPool:
    """``get(url)`` returns the cached ``Apprise`` object for ``url`` (built on first use)."""

    def __init__(self, max_size: int = 1024) -> None:
        self._objects: OrderedDict[str, apprise.Apprise] = OrderedDict()
        self._max_size = max_size

    def get(self, url: str) -> apprise.Apprise:
        """The object for ``url``, built here on first use (blocking: prefer ``aget``)."""
        found = self._objects.get(url)
        if found is not None:
            self._objects.move_to_end(url)
            return found
        return self._build(url)

    async def aget(self, url: str) -> apprise.Apprise:
        """Like ``get``, but a new object is built in a worker thread (URL parsing and, the
        first time in a process, plugin loading take milliseconds to half a second)."""
        found = self._objects.get(url)
        if found is not None:
            self._objects.move_to_end(url)
            return found
        return await anyio.to_thread.run_sync(self._build, url)

    def _build(self, url: str) -> apprise.Apprise:
        # No async mode and no service timeout: Apprise then calls the plugin in the calling
        # thread (``send``'s own), instead of queueing it for its shared pool of a few
        # threads, so "about to be sent" (``before``) really is the moment it leaves.
        obj = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False, service_timeout=0))
        if not obj.add(url):
            # The URL itself is not echoed: it may be a secret.
            raise PermanentError(
                Reason.INVALID_TARGET, "Apprise does not recognise this notification URL"
            )
        self._objects[url] = obj
        if len(self._objects) > self._max_size:
            self._objects.popitem(last=False)
        return obj

    async def send(self, url: str, *, title: str, body: str,
                   before: Callable[[], Coroutine[Any, Any, bool]] | None = None
                   ) -> Delivery | None:
        """Notify one target; never raises for a delivery failure (see ``classify``).

        The call runs in a worker thread; ``before`` is awaited from that thread right before
        the plugin sends, and None is returned (nothing sent) when it answers False. So a
        send marked as started (``executors/notify.py``) is one that left, not one waiting for
        a thread. The caller bounds the wait (cancelling abandons the thread: its request may
        still reach the target); the plugin's own socket timeouts bound the thread."""
        obj = await self.aget(url)

        def call() -> apprise.AppriseResult | None:
            if before is not None and not anyio.from_thread.run(before):
                return None
            return obj.notify(body=body, title=title)

        result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        if result is None:
            return None
        log = [f"{e.level}: {e.message}" for e in result.logs()]
        timed_out = result.timeout_count > 0
        return Delivery(ok=bool(result), timed_out=timed_out, log=log)

    @staticmethod
    async def warm_up() -> None:
        """Load Apprise's plugins (once per process) off the event loop, before the first
        notification has to wait for it."""
        try:
            await anyio.to_thread.run_sync(lambda: apprise.Apprise().add("json://localhost"))
        except Exception as exc:  # only an optimisation: the first notification loads them
            log.warning("could not preload Apprise plugins: %s", exc)

    def clear(self) -> None:
        self._objects.clear()

    def __len__(self) -> int:
        return len(self._objects)

    def __repr__(self) -> str:
        return f"NotifierPool({len(self._objects)} targets)"


def classify(delivery: Delivery) -> TransientError | PermanentError | None:
    """None when delivered; else the classified failure, from the HTTP status in the log when
    a plugin reported one, else transient (connection errors, timeouts, unknown causes)."""
    if delivery.ok:
        return None
    text = " | ".join(delivery.log) or "Apprise reported a failed delivery"
    if delivery.timed_out:
        return TransientError(Reason.TIMEOUT, f"notification timed out: {text}")
    for line in delivery.log:
        match = _STATUS.search(line)
        if match:
            error = classify_http(int(match.group(1)), what="notification service")
            if error is not None:
                error.message = f"{error.message}: {text}"
                error.args = (error.message,)
                return error
    if _TIMED_OUT.search(text) and not _BEFORE_SENDING.search(text):
        return TransientError(Reason.TIMEOUT, f"notification timed out: {text}")
    if _CONNECTION.search(text):
        return TransientError(Reason.CONNECTION, text)
    return TransientError(Reason.DELIVERY, text)
