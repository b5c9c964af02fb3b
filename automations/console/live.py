"""The live events feed: server-sent events of the events stream as it grows.

Each connection reads with its own ``XREAD BLOCK`` from ``$`` (or the ``after`` entry id, or
the ``Last-Event-ID`` the browser sends when it reconnects), filters with the events page's
filter, and sends one ``event: event`` message per match (``id:`` the entry id, ``data:`` the
event's JSON, which the page inserts as text). A comment line every ``KEEPALIVE_S`` keeps
proxies from closing an idle stream; the generator ends when the client goes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse

from automations.connection import CONNECTION_ERRORS
from automations.console.context import Console
from automations.console.queries import ENTRY_ID, Json, event_filter, event_json

BLOCK_MS = 500
KEEPALIVE_S = 15.0
BATCH = 200


def feed(c: Console, request: Request) -> StreamingResponse:
    """``ValueError`` for a bad filter or ``after``."""
    params = request.query_params
    keep = event_filter(params.get("name", ""), params.get("label", ""))
    after = request.headers.get("last-event-id") or params.get("after") or "$"
    if after != "$" and not ENTRY_ID.match(after):
        raise ValueError(f"after must be $ or a stream entry id, not {after!r}")
    return StreamingResponse(_messages(c, keep, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _messages(c: Console, keep: Callable[[Json], bool], after: str
                    ) -> AsyncIterator[bytes]:
    if after == "$":  # pin "now" at once: what arrives while the page connects is sent
        last: Any = await c.redis.xrevrange(c.keys.events, count=1)
        after = _text(last[0][0]) if last else "0-0"
    yield b"retry: 1000\n: connected\n\n"
    idle = 0.0
    while True:
        try:
            reply: Any = await c.redis.xread({c.keys.events: after}, count=BATCH,
                                             block=BLOCK_MS)
        except CONNECTION_ERRORS:
            yield b": redis unreachable, retrying\n\n"
            await anyio.sleep(1.0)
            continue
        sent = False
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                after = _text(entry_id)
                event = event_json(entry_id, fields)
                if keep(event):
                    sent = True
                    yield (f"id: {after}\nevent: event\ndata: ".encode()
                           + orjson.dumps(event) + b"\n\n")
        idle = 0.0 if sent else idle + BLOCK_MS / 1000
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield b": keep-alive\n\n"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
