"""Event dedupe in a partition: the ids it evaluated, one set per time slice.

The apply script skips an event whose id is in the set of the current slice, of the one
after (an engine whose clock runs ahead writes there) or of the two before, and adds the ids
it evaluates to the current one, in one call for all its events. A slice is half of
``dedupe_ttl_s`` and its set expires two slices after the slice ends, so an id is remembered
at least ``dedupe_ttl_s`` and at most 1.5 times that: about 90 bytes of Redis an id, against
143 for the key an event that versions before wrote (``PartitionKeys.seen``).

Those keys are still written and looked at for one ``dedupe_ttl_s`` after an installation
first runs this code (``SEEN_IDS_SINCE`` in ``keys.layout``): an entry redelivered across
the upgrade, or evaluated meanwhile by an engine of the version before, is not counted
twice. A new installation (``layout.ensure_layout``) records 0: it has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from automations.events import US, micros
from automations.keys import Keys, PartitionKeys
from automations.layout import SEEN_IDS_SINCE

MARGIN_S = 60  # a set outlives its last reader by this much


@dataclass(frozen=True, slots=True)
class Slices:
    """The sets one apply call reads (``check``) and writes (``current``, expiring in
    ``expire_s`` from the call's time)."""

    check: tuple[str, ...]
    current: str
    expire_s: int


def slice_us(ttl_s: int) -> int:
    return max(1, (ttl_s + 1) // 2) * US


def slices(part: PartitionKeys, now: datetime, ttl_s: int) -> Slices:
    length = slice_us(ttl_s)
    now_us = micros(now)
    number = now_us // length
    ends = (number + 3) * length  # the end of the last slice that looks at this one
    return Slices(
        check=tuple(part.seen_ids(n) for n in (number + 1, number, number - 1, number - 2)),
        current=part.seen_ids(number),
        expire_s=(ends - now_us) // US + MARGIN_S,
    )


async def legacy_until_us(redis: aioredis.Redis, keys: Keys, ttl_s: int, now: datetime
                          ) -> int:
    """Until when (engine us) the one-key markers are written and looked at too (0: never):
    one ``dedupe_ttl_s`` after the installation's first start with id sets, recorded by the
    first process that asks."""
    raw: Any = await redis.hget(keys.layout, SEEN_IDS_SINCE)
    if raw is None:
        await redis.hsetnx(keys.layout, SEEN_IDS_SINCE, int(now.timestamp()))
        raw = await redis.hget(keys.layout, SEEN_IDS_SINCE)
    since = int(raw)
    return (since + ttl_s) * US if since else 0
