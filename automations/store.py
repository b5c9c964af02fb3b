"""The automations store: a Redis hash by id, a name index, and an append-only change log.

Layout (``automations.keys``): ``<p>:automations`` id -> automation JSON,
``<p>:automations:names`` name -> id, ``<p>:automations:log`` a stream with one entry per
change (``kind`` upsert|delete, ``id``, ``trigger_changed`` 0|1, ``data`` the automation JSON
for upserts, ``name``). Every engine process tails the log (``automations.reload``).

``apply`` upserts by name and is atomic: it plans against what it read and writes everything
(hash, index, log entries) in one script that first checks the change log's last entry is still
the one read before the plan (every write appends to the log, so any writer in between moved
it): if not, nothing is written and the plan is made again; a failure or a refusal stores
nothing. Scripts rather than WATCH/MULTI, because redis-py's cluster transactions fail while
their slot migrates, where a script is redirected and retried.

What an ``apply`` changes (and what it refuses) is planned by ``automations.store_plan``:
an update keeps the automation's id, and its trigger's ids (so its window state) while the
trigger is unchanged.

A stored automation whose JSON no longer validates (written by another version, or by hand) is
not a missing one: ``get`` raises ``InvalidStoredAutomation`` for it, while listings skip it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import redis.asyncio as aioredis

from automations.errors import AutomationsError, NotFound
from automations.keys import Keys
from automations.models import Automation
from automations.store_parse import InvalidStoredAutomation as InvalidStoredAutomation
from automations.store_parse import parse_or_skip, parse_stored
from automations.store_plan import ApplyResult, check_unique, plan_apply, revalidate

log = logging.getLogger(__name__)

LOG_MAXLEN = 100_000
APPLY_ATTEMPTS = 20
UPSERT, DELETE = "upsert", "delete"
ChangeKind = Literal["upsert", "delete"]


@dataclass(frozen=True, slots=True)
class AutomationChange:
    """One entry of the change log; ``automation`` is ``None`` for deletes."""

    stream_id: str
    kind: ChangeKind
    automation_id: UUID
    automation: Automation | None
    trigger_changed: bool


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# KEYS: automations hash, change log. Returns the hash (flat) and the log's last entry id.
SNAPSHOT_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
return {redis.call('HGETALL', KEYS[1]), last[1] and last[1][1] or '0-0'}
"""

# KEYS: automations hash, names hash, change log, last-fired hash. ARGV: the log's last entry
# id the changes were planned against ('0-0': empty), log MAXLEN, then per change
# 'U', id, name, trigger_changed, JSON (upsert) or 'D', id, name (delete). Returns 0 (the log
# moved on meanwhile: nothing written) or 1.
WRITE_SCRIPT = """
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if (last[1] and last[1][1] or '0-0') ~= ARGV[1] then return 0 end
local i = 3
while i <= #ARGV do
  local id, name = ARGV[i + 1], ARGV[i + 2]
  if ARGV[i] == 'U' then
    redis.call('HSET', KEYS[1], id, ARGV[i + 4])
    redis.call('HSET', KEYS[2], name, id)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'kind', 'upsert', 'id', id,
               'name', name, 'trigger_changed', ARGV[i + 3], 'data', ARGV[i + 4])
    i = i + 5
  else
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], name)
    redis.call('HDEL', KEYS[4], id)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'kind', 'delete', 'id', id,
               'name', name, 'trigger_changed', '1', 'data', '')
    i = i + 3
  end
end
return 1
"""


class AutomationStore:
    """Automations in Redis; see the module docstring for the layout and guarantees."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._snapshot = redis.register_script(SNAPSHOT_SCRIPT)
        self._write_script = redis.register_script(WRITE_SCRIPT)

    def __repr__(self) -> str:
        return f"AutomationStore(prefix={self._keys.prefix!r})"

    # -- reading -----------------------------------------------------------------------
    async def all(self) -> list[Automation]:
        """Every stored automation, by name (entries that no longer parse are skipped)."""
        raw: Any = await self._redis.hgetall(self._keys.automations)
        return self._parse_all(raw)

    async def snapshot(self) -> tuple[list[Automation], str]:
        """Every automation and the log position they reflect, read atomically."""
        flat, last = await self._snapshot(
            keys=[self._keys.automations, self._keys.automations_log])
        return self._parse_all(dict(zip(flat[::2], flat[1::2], strict=True))), _text(last)

    async def get(self, automation_id: UUID | str) -> Automation | None:
        """The automation, or None when none is stored under that id; raises
        ``InvalidStoredAutomation`` when one is stored but no longer validates."""
        raw: Any = await self._redis.hget(self._keys.automations, str(automation_id))
        return None if raw is None else parse_stored(raw, str(automation_id))

    async def stored_json(self, automation_ids: Sequence[UUID | str]) -> list[bytes | None]:
        """Each automation's stored JSON (None when missing), in one HMGET: for readers that
        keep validated automations by their JSON (``automations.dispatch.automation_cache``)."""
        if not automation_ids:
            return []
        raw: list[Any] = await self._redis.hmget(self._keys.automations,
                                                 [str(i) for i in automation_ids])
        return [value.encode() if isinstance(value, str) else value for value in raw]

    async def by_name(self, name: str) -> Automation:
        """The automation called ``name`` (``NotFound`` if none, ``InvalidStoredAutomation``
        if it no longer validates)."""
        automation_id: Any = await self._redis.hget(self._keys.automation_names, name)
        found = None if automation_id is None else await self.get(_text(automation_id))
        if found is None:
            raise NotFound(f"no automation named {name!r}")
        return found

    async def find(self, name_or_id: str) -> Automation:
        """By name first, then by id (``NotFound`` if neither)."""
        try:
            return await self.by_name(name_or_id)
        except NotFound:
            found = await self.get(name_or_id) if _is_uuid(name_or_id) else None
            if found is None:
                raise NotFound(f"no automation named (or with id) {name_or_id!r}") from None
            return found

    async def last_fired(self) -> dict[str, str]:
        """Automation id -> ISO time of its latest firing (written by the engine)."""
        raw: Any = await self._redis.hgetall(self._keys.last_fired)
        return {_text(k): _text(v) for k, v in raw.items()}

    async def last_log_id(self) -> str:
        last: Any = await self._redis.xrevrange(self._keys.automations_log, count=1)
        return _text(last[0][0]) if last else "0-0"

    # -- writing -----------------------------------------------------------------------
    async def apply(
        self, automations: Sequence[Automation], *, prune: bool = False, dry_run: bool = False
    ) -> ApplyResult:
        """Upsert ``automations`` by name in one atomic step; with ``prune`` also delete the
        stored ones not given. Raises ``InvalidAutomations`` (nothing written) when refused."""
        check_unique(automations)
        keys = self._keys
        for _ in range(APPLY_ATTEMPTS):
            head = await self.last_log_id()
            names: Any = await self._redis.hgetall(keys.automation_names)
            stored: Any = await self._redis.hgetall(keys.automations)
            plan = plan_apply(automations, _decode(names), _decode(stored), prune=prune)
            plan.result.dry_run = dry_run
            if dry_run or not (plan.upserts or plan.deletes):
                return plan.result
            if await self._write(head, plan.upserts, plan.deletes):
                return plan.result
        raise AutomationsError("the store kept changing during apply; try again")

    async def set_enabled(self, automation_id: UUID | str, enabled: bool) -> Automation:
        """Pause (``False``) or resume (``True``); window state is kept. Resuming runs the
        loop guard again (a paused automation is not checked)."""
        key = str(automation_id)
        for _ in range(APPLY_ATTEMPTS):
            head = await self.last_log_id()
            raw: Any = await self._redis.hget(self._keys.automations, key)
            if raw is None:
                raise NotFound(f"no automation with id {key}")
            current = parse_stored(raw, key)
            if current.enabled == enabled:
                return current
            updated = revalidate(current, enabled=enabled)
            if await self._write(head, [(updated, False, None)], []):
                return updated
        raise AutomationsError("the store kept changing; try again")

    async def delete(self, name_or_id: str) -> Automation:
        """Delete by name (or id); returns what was deleted (``NotFound`` if nothing)."""
        for _ in range(APPLY_ATTEMPTS):
            head = await self.last_log_id()
            target = await self.find(name_or_id)
            if await self._write(head, [], [(str(target.id), target.name)]):
                return target
        raise AutomationsError("the store kept changing; try again")

    # -- the change log ----------------------------------------------------------------
    async def read_changes(
        self, after: str, *, block_ms: int | None = None, count: int = 100
    ) -> list[AutomationChange]:
        """Log entries after ``after`` (a stream id), waiting up to ``block_ms`` for one."""
        changes, _ = await self.read_log(after, block_ms=block_ms, count=count)
        return changes

    async def read_log(
        self, after: str, *, block_ms: int | None = None, count: int = 100
    ) -> tuple[list[AutomationChange], str]:
        """Like ``read_changes``, plus the id of the last entry read, malformed ones included,
        which is where the next read starts (so a bad entry is skipped once, not forever)."""
        reply: Any = await self._redis.xread(
            {self._keys.automations_log: after}, count=count, block=block_ms
        )
        changes: list[AutomationChange] = []
        position = after
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                position = _text(entry_id)
                change = self._parse_change(position, fields)
                if change is not None:
                    changes.append(change)
        return changes, position

    async def changes(self, after: str = "$", *, block_ms: int = 1000
                      ) -> AsyncIterator[AutomationChange]:
        """Every change after ``after`` ("$": from now on), forever."""
        position = await self.last_log_id() if after == "$" else after
        while True:
            changes, position = await self.read_log(position, block_ms=block_ms)
            for change in changes:
                yield change

    async def log_starts_after(self, position: str) -> bool:
        """True when entries after ``position`` were trimmed away (a reader must resync)."""
        first: Any = await self._redis.xrange(self._keys.automations_log, count=1)
        if not first:
            return False
        return _stream_id(_text(first[0][0])) > _stream_id(position) and position != "0-0"

    # -- internals ---------------------------------------------------------------------
    async def _write(self, head: str, upserts: Iterable[tuple[Automation, bool, str | None]],
                     deletes: Iterable[tuple[str, str]]) -> bool:
        """The changes in one script, only if the log's last entry is still ``head`` (False:
        another writer got in between, nothing written)."""
        args: list[Any] = [head, LOG_MAXLEN]
        for automation, trigger_changed, _ in upserts:
            args += ["U", str(automation.id), automation.name, "1" if trigger_changed else "0",
                     automation.model_dump_json()]
        for automation_id, name in deletes:
            args += ["D", automation_id, name]
        keys = self._keys
        written = await self._write_script(
            keys=[keys.automations, keys.automation_names, keys.automations_log,
                  keys.last_fired], args=args)
        return bool(int(written))

    def _parse_all(self, raw: Mapping[bytes, bytes]) -> list[Automation]:
        parsed = (parse_or_skip(data, _text(key)) for key, data in raw.items())
        return sorted((a for a in parsed if a is not None), key=lambda a: a.name)

    def _parse_change(
        self, entry_id: str, fields: Mapping[bytes, bytes]
    ) -> AutomationChange | None:
        try:
            kind = _text(fields[b"kind"])
            automation_id = UUID(_text(fields[b"id"]))
            automation = None
            if kind == UPSERT:
                automation = Automation.model_validate_json(fields[b"data"])
            elif kind != DELETE:
                raise ValueError(f"unknown kind {kind!r}")
        except (KeyError, ValueError) as exc:
            log.error("automations log entry %s is malformed, skipped: %s", entry_id, exc)
            return None
        changed = fields.get(b"trigger_changed", b"1") == b"1"
        return AutomationChange(entry_id, "upsert" if kind == UPSERT else "delete",
                                automation_id, automation, changed)


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
