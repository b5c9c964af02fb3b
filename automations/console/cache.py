"""What the console keeps in memory so a page never reads everything: the automations (a
snapshot kept in step with the store's change log, read on demand) and each automation's
firings in the last 24 hours (the history stream, read incrementally).

Both catch up under a lock at the start of a request that needs them; the first call reads
everything once (``warm`` does it when the console starts), every later one only what is new.
"""

from __future__ import annotations

from collections import Counter, deque
from datetime import datetime, timedelta
from typing import Any

import anyio
import redis.asyncio as aioredis

from automations.insight.history import stream_id_at
from automations.keys import Keys
from automations.models import Automation
from automations.store import DELETE, AutomationStore
from triggers.index import TriggerIndex

LOG_PAGE = 1000
HISTORY_PAGE = 5000
DAY = timedelta(hours=24)
_FIRED = b'"kind":"fired"'
_AID = b'"automation_id":"'


class AutomationsCache:
    """Every valid stored automation by id, and the names sorted (for paging)."""

    def __init__(self, store: AutomationStore) -> None:
        self.store = store
        self.by_id: dict[str, Automation] = {}
        self.index = TriggerIndex()  # the engine's name index: who watches an event name
        self._sorted: list[Automation] | None = None
        self._position: str | None = None
        self._lock = anyio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if self._position is None:
                await self._resync()
            while True:
                position = self._position or "0-0"
                changes, last = await self.store.read_log(position, count=LOG_PAGE)
                if last == position:
                    return
                if await self.store.log_starts_after(position):
                    self._position = None  # trimmed past us: start over
                    await self._resync()
                    return
                for change in changes:
                    aid = str(change.automation_id)
                    if change.kind == DELETE or change.automation is None:
                        self.by_id.pop(aid, None)
                        self.index.remove(change.automation_id)
                    else:
                        self.by_id[aid] = change.automation
                        self.index.add(change.automation_id, change.automation.trigger)
                self._sorted = None
                self._position = last
                if len(changes) < LOG_PAGE:
                    return

    async def _resync(self) -> None:
        automations, self._position = await self.store.snapshot()
        self.by_id = {str(a.id): a for a in automations}
        self.index = TriggerIndex()
        for automation in automations:
            self.index.add(automation.id, automation.trigger)
        self._sorted = None

    async def all(self) -> list[Automation]:
        """Every automation, by name."""
        await self.refresh()
        if self._sorted is None:
            self._sorted = sorted(self.by_id.values(), key=lambda a: a.name)
        return self._sorted

    async def watching(self, event_name: str) -> list[Automation]:
        """The automations with a trigger whose ``expect`` or ``after`` matches the name."""
        await self.refresh()
        ids = dict.fromkeys(str(c.automation_id) for c in self.index.candidates(event_name))
        return [self.by_id[i] for i in ids if i in self.by_id]

    async def get(self, name_or_id: str) -> Automation | None:
        await self.refresh()
        found = self.by_id.get(name_or_id)
        if found is None:
            found = next((a for a in self.by_id.values() if a.name == name_or_id), None)
        return found


class FiringCounts:
    """Firings per automation id over the last 24 hours, from the history stream's ``fired``
    entries (the dispatcher's record: what it took, so within the dispatch latency of the
    engine's firing)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.counts: Counter[str] = Counter()
        self._seen: deque[tuple[int, str]] = deque()
        self._position: str | None = None
        self._lock = anyio.Lock()

    async def refresh(self, now: datetime) -> Counter[str]:
        async with self._lock:
            start = stream_id_at(now - DAY)
            low = f"({self._position}" if self._position else f"{start}-0"
            while True:
                page: Any = await self.redis.xrange(self.keys.history, min=low, max="+",
                                                    count=HISTORY_PAGE)
                for raw_id, fields in page:
                    self._add(raw_id, fields.get(b"data", b""))
                if page:
                    self._position = _text(page[-1][0])
                    low = f"({self._position}"
                if len(page) < HISTORY_PAGE:
                    break
            while self._seen and self._seen[0][0] < start:
                _, aid = self._seen.popleft()
                self.counts[aid] -= 1
                if self.counts[aid] <= 0:
                    del self.counts[aid]
            return self.counts

    def _add(self, raw_id: Any, data: bytes) -> None:
        if _FIRED not in data:
            return
        at = data.find(_AID)
        if at < 0:
            return
        at += len(_AID)
        aid = data[at:data.find(b'"', at)].decode()
        self._seen.append((int(_text(raw_id).partition("-")[0]), aid))
        self.counts[aid] += 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
