"""The installation's key layout: fixed at first start, checked at every start, and an
installation of the previous layout (keys without hash tags, before partitions) moved to it.

``keys.layout`` records ``partitions`` on first start (HSETNX: the first process wins); a
process whose ``AUTOMATIONS_PARTITIONS`` differs refuses to start (``LayoutMismatch``), since
an automation's partition follows from that count and its state would be looked for elsewhere.

The previous layout named keys ``<prefix>:<name>``; the new one ``<prefix>:{g}:<name>`` (and
each partition's outbox ``<prefix>:{<tag>}:firings``). On a single Redis, before the layout is
first recorded, the durable keys are renamed (each only when its new name is still free):
the automations store, deployments, blocks, flow runs, the streams with their consumer groups,
the dead letters, action retries, leases and done records, the Prefect bridge's cursors and
the events held for ordering. The old firings stream becomes partition 0's outbox (the
dispatcher reads every partition). Window state is not moved: counts, deadlines and event
dedupe markers start empty. A cluster is always a new installation (the old names span every
slot), so nothing is moved there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from automations.errors import LayoutMismatch
from automations.keys import Keys

log = logging.getLogger(__name__)

PARTITIONS_FIELD = "partitions"
SEEN_IDS_SINCE = "seen_ids_since"
"""When (s) the installation first ran with per-slice sets of evaluated ids
(``engine/dedupe.py``); 0 for one that started with them: it has no one-key markers."""
OLD_NAMES = (
    "automations", "automations:names", "automations:log", "automations:last-fired",
    "deployments", "deployments:names", "deployments:cursors", "blocks",
    "flow-runs", "flow-runs:active", "flow-runs:due",
    "events", "runs", "decisions", "history", "firings",
    "actions:retries", "actions:retry-jobs",
    "prefect:cursor", "prefect:writeback", "prefect:taken-over",
    "ordering:held", "ordering:waitlist",
)
"""The previous layout's single keys that are moved (``<prefix>:<name>``)."""
OLD_PATTERNS = (
    "dead:", "done:", "flow-runs:lease:", "actions:lease:", "actions:sending:",
    "actions:cooldown:", "actions:cooldown-dropped:", "prefect:seen:", "ordering:followers:",
)
"""The previous layout's key families that are moved (``<prefix>:<family><rest>``)."""
SCAN_COUNT = 1000
RENAME_BATCH = 200

# KEYS: old, new pairs. Renames each old key whose new name is free; per pair 1 moved, 0 no
# old key, -1 kept (the new key exists already).
RENAME_FREE = """
local out = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    out[#out + 1] = 0
  elseif redis.call('EXISTS', KEYS[i + 1]) == 1 then
    out[#out + 1] = -1
  else
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
    out[#out + 1] = 1
  end
end
return out
"""


async def ensure_layout(redis: aioredis.Redis, keys: Keys) -> None:
    """Record the layout on first start (moving a previous-layout installation first), or
    check that ``keys`` agree with the recorded one; ``LayoutMismatch`` when they do not."""
    recorded: Any = await redis.hget(keys.layout, PARTITIONS_FIELD)
    if recorded is None:
        if not isinstance(redis, RedisCluster):
            await migrate(redis, keys)
        # a new installation (or one moved from the previous layout, whose markers are not
        # moved) has no one-key dedupe markers to look at
        await redis.hsetnx(keys.layout, SEEN_IDS_SINCE, 0)
        await redis.hsetnx(keys.layout, PARTITIONS_FIELD, keys.partitions)
        recorded = await redis.hget(keys.layout, PARTITIONS_FIELD)  # another process's, maybe
    if int(recorded) != keys.partitions:
        raise LayoutMismatch(
            f"this installation has {int(recorded)} partitions, fixed at install; "
            f"AUTOMATIONS_PARTITIONS={keys.partitions} disagrees: set "
            f"AUTOMATIONS_PARTITIONS={int(recorded)} for every process of prefix "
            f"{keys.prefix!r} (a different count needs a new installation, another "
            f"AUTOMATIONS_PREFIX)")


def new_name(keys: Keys, name: str) -> str:
    """Where the previous layout's ``<prefix>:<name>`` lives now."""
    if name == "firings":
        return keys.partition(0).firings
    return f"{keys.g}:{name}"


async def migrate(redis: aioredis.Redis, keys: Keys) -> dict[str, list[str]]:
    """Rename the previous layout's keys (module docstring); one WARNING when any moved.
    Returns the names (or ``family*`` with a count) ``moved`` and ``kept``."""
    moved: list[str] = []
    kept: list[str] = []
    flags = await _rename(redis, keys, list(OLD_NAMES))
    moved += [name for name, flag in zip(OLD_NAMES, flags, strict=True) if flag > 0]
    kept += [name for name, flag in zip(OLD_NAMES, flags, strict=True) if flag < 0]
    for family in OLD_PATTERNS:
        names = await _family(redis, keys, family)
        flags = await _rename(redis, keys, names)
        for found, sign in ((moved, 1), (kept, -1)):
            count = sum(1 for flag in flags if flag == sign)
            if count:
                found.append(f"{count} {family}*")
    if moved:
        log.warning(
            "moved this installation (prefix %r) to the hash-tagged key layout: %s%s; window "
            "state (counts, deadlines, composite and proactive state, event dedupe markers) "
            "starts empty, the old window keys under %s:* are left behind",
            keys.prefix, ", ".join(moved),
            f"; kept (the new key existed already): {', '.join(kept)}" if kept else "",
            keys.prefix)
    return {"moved": moved, "kept": kept}


async def _family(redis: aioredis.Redis, keys: Keys, family: str) -> list[str]:
    """The previous layout's keys of one family, as names relative to the prefix."""
    pattern = _glob_escape(f"{keys.prefix}:{family}") + "*"
    start = len(keys.prefix) + 1
    found = {_text(k)[start:] async for k in redis.scan_iter(match=pattern, count=SCAN_COUNT)}
    return sorted(found)


async def _rename(redis: aioredis.Redis, keys: Keys, names: Sequence[str]) -> list[int]:
    flags: list[int] = []
    for first in range(0, len(names), RENAME_BATCH):
        pairs = [key for name in names[first:first + RENAME_BATCH]
                 for key in (f"{keys.prefix}:{name}", new_name(keys, name))]
        reply: Any = await redis.eval(RENAME_FREE, len(pairs), *pairs)
        flags += [int(flag) for flag in reply]
    return flags


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
