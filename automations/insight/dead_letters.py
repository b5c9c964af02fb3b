"""Dead letters: list, show, re-drive and purge the entries of the dead-letter streams.

The dead stream of a global stream is ``<p>:{g}:dead:<name>`` (``events``, ``runs``); each
partition's outbox has its own, in its slot, ``<p>:{<tag>}:dead:firings``; given-up actions go
to ``<p>:{g}:dead:firings``. Short names: ``events``, ``runs``, ``firings@3`` (partition 3's
outbox) and ``firings``, which names every firings dead stream at once (the actions' and every
partition's).

Two writers fill them. ``streams.consumer`` copies an entry it gives up on (rejected, or
delivered ``max_deliveries`` times) with ``reason``, ``deliveries``, ``source_stream``,
``source_id``, ``group`` and ``consumer`` added to its fields. The dispatcher gives an action
up with the firing (``data``), ``reason``, ``action_index``, ``action_type``, ``attempts``,
``automation_id`` and ``idempotency_key``.

A re-drive is one script call that checks the dead letter still exists, writes the re-drive and
only then deletes it, so a letter is never lost nor re-driven twice: a consumer's letter goes
back (its original fields, new id) to its source stream; a given-up action becomes a retry job
due now (attempt ``attempts + 1``, run by any dispatcher) with its ``gave-up`` record removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from automations.dispatch.retries import RetryJob
from automations.errors import AutomationsError, NotFound
from automations.keys import Keys

CONSUMER_FIELDS = ("reason", "deliveries", "source_stream", "source_id", "group", "consumer")
ACTION_FIELDS = ("action_index", "action_type", "attempts", "automation_id", "idempotency_key")
ENTRY_ID = re.compile(r"^\d+-\d+$")

# KEYS: dead stream, target stream. ARGV: dead id, then the fields to re-add.
REDRIVE_ENTRY = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""

# KEYS: dead stream, done key, retry jobs hash, retries zset. ARGV: dead id, job key, job JSON,
# due. Returns 1 (scheduled), 0 (no such letter), -1 (the action is done meanwhile: dropped).
REDRIVE_ACTION = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
if redis.call('GET', KEYS[2]) == 'done' then
  redis.call('XDEL', KEYS[1], ARGV[1])
  return -1
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""


class CannotRedrive(AutomationsError):
    """The dead letter does not say where it came from."""


@dataclass(frozen=True)
class DeadLetter:
    key: str
    """The dead stream key."""
    id: str
    fields: dict[str, str]

    @property
    def at(self) -> datetime:
        """When it was dead-lettered (its stream id)."""
        return datetime.fromtimestamp(int(self.id.partition("-")[0]) / 1000, UTC)

    @property
    def reason(self) -> str:
        return self.fields.get("reason", "")

    @property
    def is_action(self) -> bool:
        """A given-up action (dispatcher), rather than a stream entry (consumer)."""
        return "idempotency_key" in self.fields and "action_index" in self.fields

    @property
    def source(self) -> str:
        f = self.fields
        if self.is_action:
            return (f"action {f.get('action_index')} ({f.get('action_type')}) of firing "
                    f"{f['idempotency_key'].rpartition(':')[0]}")
        if "source_stream" in f:
            return f"{f['source_stream']} {f.get('source_id', '?')}"
        return "?"

    def original(self) -> dict[str, str]:
        """The fields of the entry as it was on its source stream."""
        drop = (*ACTION_FIELDS, "reason") if self.is_action else CONSUMER_FIELDS
        return {k: v for k, v in self.fields.items() if k not in drop}

    def payload(self) -> Any:
        """The ``data`` field parsed as JSON (as text when it is not JSON; None if absent)."""
        data = self.fields.get("data")
        if data is None:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return data

    def to_json(self, *, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "stream": self.key, "at": self.at.isoformat(),
                               "reason": self.reason, "source": self.source,
                               "kind": "action" if self.is_action else "entry"}
        if full:
            out["fields"] = {k: v for k, v in self.fields.items() if k != "data"}
            out["payload"] = self.payload()
        return out


FIRINGS = "firings"
PARTITION_MARK = "@"


def partition_dead_keys(keys: Keys) -> list[str]:
    """Every partition outbox's dead stream, in partition order."""
    return [part.dead_firings for part in keys.all_partitions]


def dead_keys(keys: Keys, stream: str) -> list[str]:
    """The dead keys a stream name means: a short name (``events``, ``dead:events``,
    ``firings``: all of them, ``firings@3``), a stream key or a dead stream key."""
    stream = stream.strip()
    if not stream:
        raise ValueError("empty stream name")
    if stream in partition_dead_keys(keys) or stream.startswith(f"{keys.g}:dead:"):
        return [stream]
    if stream in keys.outboxes:
        return [keys.dead(stream)]
    short = stream.removeprefix(f"{keys.g}:").removeprefix(f"{keys.prefix}:").removeprefix(
        "dead:")
    name, mark, number = short.partition(PARTITION_MARK)
    if mark:
        return [_partition_dead_key(keys, name, number)]
    if not short or "{" in short or "}" in short:
        raise ValueError(f"{stream!r} is not a stream name (like events, firings, firings@0)")
    if short == FIRINGS:
        return [keys.dead(FIRINGS), *partition_dead_keys(keys)]
    return [keys.dead(short)]


def _partition_dead_key(keys: Keys, name: str, number: str) -> str:
    if name != FIRINGS or not number.isdigit() or int(number) >= keys.partitions:
        raise ValueError(f"no stream {name}{PARTITION_MARK}{number}: partition outboxes are "
                         f"firings@0 to firings@{keys.partitions - 1}")
    return keys.partition(int(number)).dead_firings


def short_name(keys: Keys, key: str) -> str:
    """``events``, ``firings`` (given-up actions), ``firings@3`` (partition 3's outbox)."""
    for part in keys.all_partitions:
        if key == part.dead_firings:
            return f"{FIRINGS}{PARTITION_MARK}{part.number}"
    return key.removeprefix(f"{keys.g}:dead:")


def family(name: str) -> str:
    """The name a short name is listed under when partitions are merged (``firings@3`` ->
    ``firings``)."""
    return name.partition(PARTITION_MARK)[0]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _letter(key: str, raw_id: Any, fields: dict[Any, Any]) -> DeadLetter:
    return DeadLetter(key, _text(raw_id), {_text(k): _text(v) for k, v in fields.items()})


async def dead_streams(redis: aioredis.Redis, keys: Keys) -> dict[str, int]:
    """Every dead stream of this prefix with its length, by key: the global ones found by
    SCAN, the partitions' (known) when they exist."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", keys.g) + ":dead:*"
    found = sorted({_text(k) async for k in redis.scan_iter(match=pattern, count=1000,
                                                             _type="stream")})
    candidates = [*found, *partition_dead_keys(keys)]
    pipe = redis.pipeline(transaction=False)
    for key in candidates:
        pipe.xlen(key)
    lengths = [int(n) for n in await pipe.execute()]
    return {key: n for key, n in zip(candidates, lengths, strict=True)
            if key in found or n}


async def read(redis: aioredis.Redis, key: str, *, limit: int | None = None
               ) -> list[DeadLetter]:
    """The letters of one dead stream, newest first."""
    raw: Any = await redis.xrevrange(key, count=limit)
    return [_letter(key, i, f) for i, f in raw]


async def read_all(redis: aioredis.Redis, keys: Sequence[str], *, limit: int | None = None
                   ) -> list[DeadLetter]:
    """The letters of several dead streams merged, newest first."""
    letters = [letter for key in keys for letter in await read(redis, key, limit=limit)]
    letters.sort(key=lambda d: _id_order(d.id), reverse=True)
    return letters[:limit]


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def find(redis: aioredis.Redis, keys: Keys, entry_id: str, stream: str | None = None
               ) -> DeadLetter:
    """The letter ``entry_id`` of ``stream`` (any dead stream when None); ``NotFound``, or
    ``ValueError`` for a malformed id or an id found in several streams."""
    if not ENTRY_ID.match(entry_id):
        raise ValueError(f"{entry_id!r} is not a stream entry id (like 1712345678901-0)")
    where = dead_keys(keys, stream) if stream else list(await dead_streams(redis, keys))
    found = []
    for key in where:
        raw: Any = await redis.xrange(key, min=entry_id, max=entry_id)
        found += [_letter(key, i, f) for i, f in raw]
    if not found:
        place = stream if stream else "any dead stream"
        raise NotFound(f"no dead letter {entry_id} in {place}")
    if len(found) > 1:
        raise ValueError(f"{entry_id} is in several dead streams "
                         f"({', '.join(short_name(keys, f.key) for f in found)}): name one")
    return found[0]


async def redrive(redis: aioredis.Redis, keys: Keys, letter: DeadLetter, *, now: float) -> str:
    """Re-drive ``letter`` (see the module docstring) and say where it went; ``NotFound`` when
    it is gone meanwhile, ``CannotRedrive`` when it does not say where it came from."""
    if letter.is_action:
        return await _redrive_action(redis, keys, letter, now)
    source = letter.fields.get("source_stream")
    original = letter.original()
    if not source or not original:
        raise CannotRedrive(f"dead letter {letter.id} names no source stream to go back to")
    args: list[Any] = [letter.id]
    for name, value in original.items():
        args += [name, value]
    new_id = await redis.eval(REDRIVE_ENTRY, 2, letter.key, source, *args)
    if new_id is None:
        raise NotFound(f"dead letter {letter.id} is gone (re-driven or purged meanwhile)")
    return f"back on {source} as {_text(new_id)}"


async def _redrive_action(redis: aioredis.Redis, keys: Keys, letter: DeadLetter,
                          now: float) -> str:
    f = letter.fields
    try:
        job = RetryJob(key=f["idempotency_key"], firing=f["data"],
                       automation_id=f["automation_id"], index=int(f["action_index"]),
                       action_type=f["action_type"], attempt=int(f.get("attempts") or 0) + 1)
    except (KeyError, ValueError) as exc:
        raise CannotRedrive(f"dead letter {letter.id} is an incomplete action record: "
                            f"{exc}") from None
    result = await redis.eval(
        REDRIVE_ACTION, 4, letter.key, keys.done(job.key), keys.action_retry_jobs,
        keys.action_retries, letter.id, job.key, job.to_json(), now)
    if int(result) == 0:
        raise NotFound(f"dead letter {letter.id} is gone (re-driven or purged meanwhile)")
    if int(result) < 0:
        return f"action {job.key} was executed meanwhile; dead letter removed"
    return f"action {job.key} ({job.action_type}) scheduled now as attempt {job.attempt}"


async def purge(redis: aioredis.Redis, letters: Sequence[DeadLetter]) -> int:
    """Delete these letters; returns how many were still there."""
    removed = 0
    for letter in letters:
        removed += int(await redis.xdel(letter.key, letter.id))
    return removed


async def purge_all(redis: aioredis.Redis, key: str) -> int:
    """Delete every letter of one dead stream up to the newest one now (a letter added while
    this runs stays)."""
    newest: Any = await redis.xrevrange(key, count=1)
    if not newest:
        return 0
    ms, _, seq = _text(newest[0][0]).partition("-")
    return int(await redis.xtrim(key, minid=f"{ms}-{int(seq) + 1}", approximate=False))
