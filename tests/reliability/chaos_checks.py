"""The chaos run's books and checks: what Redis and the receiver hold after the run, the
drain, and every check that makes the report fail.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from automations.connection import CONNECTION_ERRORS
from automations.keys import ANNOUNCE_GROUP, DISPATCH_GROUP, ENGINE_GROUP, Keys
from tests.reliability.chaos_faults import STOP_LIMIT_S, Chaos, Done, Fleet, classify
from tests.reliability.chaos_load import Plan, Workload
from tests.reliability.chaos_receiver import Hit, Receiver

DRAIN_LIMIT_S = 20.0  # below a 30 s lease: a drain that waits for one fails
ALLOWED = ("timeout", "crash", "frozen")  # the documented windows of a repeated effect


@dataclass(frozen=True, slots=True)
class Fired:
    id: str
    automation: str
    event_id: str | None
    announcement: str | None


class Books:
    """What Redis holds: the firings (read as they come), announcements and dead letters."""

    def __init__(self, client: aioredis.Redis, keys: Keys, names: dict[str, str]) -> None:
        self.client, self.keys, self.names = client, keys, names
        self.outbox = keys.partition(0).firings  # the chaos runs one partition
        self.fired: list[Fired] = []
        self._after = "-"

    async def read_firings(self) -> None:
        while True:
            entries: Any = await self.client.xrange(self.outbox, min=self._after, count=2000)
            entries = [e for e in entries if e[0].decode() != self._after]
            if not entries:
                return
            for entry_id, fields in entries:
                self._after = entry_id.decode()
                event_id = fields.get(b"event_id")
                for item in orjson.loads(fields.get(b"firings", b"[]")):
                    self.fired.append(Fired(
                        item["id"], self.names.get(item["automation_id"], item["automation_id"]),
                        event_id.decode() if event_id else None,
                        item.get("automation_triggered_event_id")))

    async def scan(self, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        found: list[tuple[bytes, dict[bytes, bytes]]] = []
        after = "-"
        while True:
            chunk: Any = await self.client.xrange(stream, min=after, count=5000)
            chunk = [e for e in chunk if e[0].decode() != after]
            if not chunk:
                return found
            found += chunk
            after = chunk[-1][0].decode()

    async def announcements(self) -> Counter[str]:
        wanted = {f.announcement for f in self.fired}
        return Counter(fields[b"id"].decode() for _, fields in await self.scan(self.keys.events)
                       if fields.get(b"id", b"").decode() in wanted)

    async def dead_events(self) -> dict[str, str]:
        return {f[b"source_id"].decode(): f[b"reason"].decode()
                for _, f in await self.scan(self.keys.dead(self.keys.events))}

    async def dead_firings(self) -> list[str]:
        """Rejected outbox entries, then given-up actions."""
        found = [*await self.scan(self.keys.partition(0).dead_firings),
                 *await self.scan(self.keys.dead("firings"))]
        return [f[b"reason"].decode()[:160] for _, f in found]

    async def maybe_delivered(self) -> set[str]:
        """Actions given up because an attempt timed out with an unknown outcome: a
        notification is sent at most once (docs/actions.md), so such an action is not retried
        but dead-lettered, where an operator can re-drive it. Not lost: parked, and counted."""
        return {f[b"idempotency_key"].decode()
                for _, f in await self.scan(self.keys.dead("firings"))
                if b"may have been delivered" in f.get(b"reason", b"")
                and b"idempotency_key" in f}

    async def idle(self) -> bool:
        """Every group has handled everything, and no action retry waits."""
        for stream, group in ((self.keys.events, ENGINE_GROUP),
                              (self.outbox, DISPATCH_GROUP),
                              (self.outbox, ANNOUNCE_GROUP)):
            if not await acknowledged(self.client, stream, group):
                return False
        return not await self.client.zcard(self.keys.action_retries)


async def acknowledged(client: aioredis.Redis, stream: str, group: str) -> bool:
    groups: Any = await client.xinfo_groups(stream)
    last: Any = await client.xrevrange(stream, count=1)
    for info in groups:
        if info["name"] in (group, group.encode()):
            return bool((not last or info["last-delivered-id"] == last[0][0])
                        and info["pending"] == 0)
    return False


def expected_key(fired: Fired, good: dict[str, dict[str, Any]]) -> str | None:
    """The key a firing answers for: its event, or (threshold) its event's resource."""
    if fired.event_id is None or fired.event_id not in good:
        return None
    if fired.automation == "chaos-threshold":
        resource: str = good[fired.event_id]["resource"]["prefect.resource.id"]
        return resource
    return fired.event_id


def effects_missing(books: Books, hits: list[Hit], work: Workload) -> int:
    """Expected firings not yet seen plus seen firings whose effect has not arrived."""
    want = work.expected()
    seen: defaultdict[str, set[str]] = defaultdict(set)
    for fired in books.fired:
        if (key := expected_key(fired, work.good)) is not None:
            seen[fired.automation].add(key)
    acted = {h.key for h in hits if h.acted}
    missing = sum(len(keys - seen[name]) for name, keys in want.items())
    return missing + sum(f"{f.id}:0" not in acted for f in books.fired)


async def drain(books: Books, receiver: Receiver, work: Workload, since: float,
                timeout: float) -> float | None:
    """Seconds from ``since`` until every expected effect arrived and the services are idle
    (``None``: not within ``timeout``)."""
    while time.monotonic() < since + timeout:
        try:
            await books.read_firings()
            dead = len(await books.dead_firings())
            if effects_missing(books, receiver.snapshot(), work) <= dead and await books.idle():
                return time.monotonic() - since
        except CONNECTION_ERRORS:
            pass
        await asyncio.sleep(0.25)
    return None


@dataclass
class Report:
    plan: Plan
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, failure: str) -> None:
        if not ok:
            self.failures.append(failure)

    def text(self) -> str:
        lines = [f"chaos run ({self.plan.name})"]
        lines += [f"  {name}: {value}" for name, value in self.figures.items()]
        lines += ["FAILED:" if self.failures else "all checks held"]
        lines += [f"  - {failure}" for failure in self.failures]
        return "\n".join(lines)


def sample(items: Iterable[Any], n: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" (+{len(items) - n})" if len(items) > n else "")


def check_firings(report: Report, books: Books, work: Workload, announced: Counter[str]) -> None:
    want = work.expected()
    got: defaultdict[str, Counter[str]] = defaultdict(Counter)
    strays = []
    for fired in books.fired:
        key = expected_key(fired, work.good)
        if key is None or key not in want.get(fired.automation, set()):
            strays.append(f"{fired.automation} {fired.id} (event {fired.event_id})")
        else:
            got[fired.automation][key] += 1
    for name, keys in want.items():
        lost = keys - set(got[name])
        twice = [k for k, n in got[name].items() if n > 1]
        report.figures[f"firings {name}"] = f"{sum(got[name].values())} of {len(keys)}"
        report.check(not lost, f"{name}: {len(lost)} expected firings missing: {sample(lost)}")
        report.check(not twice, f"{name}: {len(twice)} fired twice: {sample(twice)}")
    ids = Counter(f.id for f in books.fired)
    report.check(not strays, f"{len(strays)} unexpected firings: {sample(strays)}")
    report.check(all(n == 1 for n in ids.values()),
                 f"firing ids repeated: {sample(i for i, n in ids.items() if n > 1)}")
    unannounced = [f.id for f in books.fired if announced[f.announcement or ""] == 0]
    repeated = [f.id for f in books.fired if announced[f.announcement or ""] > 1]
    report.figures["announcements"] = sum(announced.values())
    report.check(not unannounced, f"{len(unannounced)} firings never announced: "
                                  f"{sample(unannounced)}")
    report.check(not repeated, f"{len(repeated)} firings announced more than once: "
                               f"{sample(repeated)}")


def check_effects(report: Report, books: Books, hits: list[Hit], faults: list[Done],
                  timed_out: set[str], dead: list[str], maybe_delivered: set[str]) -> None:
    by_key: defaultdict[str, list[Hit]] = defaultdict(list)
    for hit in hits:
        by_key[hit.key or "?"].append(hit)
    keys = {f"{f.id}:0" for f in books.fired}
    classes: Counter[str] = Counter()
    examples: defaultdict[str, list[str]] = defaultdict(list)
    for key, key_hits in by_key.items():
        acted = [h for h in key_hits if h.acted]
        for n, repeat in enumerate(acted[1:], start=1):
            kind = classify(acted[:n], repeat, faults, key in timed_out)
            classes[kind] += 1
            examples[kind].append(f"{key} via {repeat.path}")
    effectless = [k for k in keys if not any(h.acted for h in by_key.get(k, []))]
    parked = [k for k in effectless if k in maybe_delivered]
    effectless = [k for k in effectless if k not in maybe_delivered]
    report.figures["notifications parked after an unknown outcome"] = len(parked)
    report.figures["requests"] = (
        f"{len(hits)} ({sum(h.answer == 'error' for h in hits)} answered 500, "
        f"{sum(h.answer == 'late' for h in hits)} late, "
        f"{sum(h.sender is None for h in hits)} from a process not found)")
    report.figures["repeated effects"] = dict(sorted(classes.items())) or 0
    report.figures["dead-lettered firings"] = len(dead)
    report.check(not effectless, f"{len(effectless)} firings without effect at the receiver "
                                 f"(dead letters: {sample(Counter(dead).items(), 3)}): "
                                 f"{sample(effectless)}")
    report.check("?" not in by_key, f"{len(by_key.get('?', []))} requests without a key")
    for kind in sorted(set(classes) - set(ALLOWED)):
        report.check(False, f"{classes[kind]} repeated effects outside the documented windows "
                            f"({kind}): {sample(examples[kind])}")


def check_refusals(report: Report, work: Workload, dead: dict[str, str]) -> None:
    wrong = []
    for entry_id, (kind, why) in work.malformed.items():
        reason = dead.get(entry_id)
        if reason is None or why not in reason:
            wrong.append(f"{kind} {entry_id}: {reason or 'accepted'}")
    report.figures["malformed entries"] = f"{len(work.malformed)} (refused right: " \
                                          f"{len(work.malformed) - len(wrong)})"
    report.check(not wrong, f"{len(wrong)} malformed entries not refused with their reason: "
                            f"{sample(wrong, 3)}")
    code, err = work.file_result
    missed = [n for n, why in work.file_lines.items()
              if not re.search(rf"^line {n}: .*{re.escape(why)}", err, re.MULTILINE | re.I)]
    report.figures["emit --file"] = f"exit {code}, {len(work.file_lines)} bad lines"
    report.check(code == 2 and not missed, f"emit --file: exit {code}, bad lines not reported "
                                           f"with their reason: {sample(missed)}; {err[-300:]}")


def check_processes(report: Report, fleet: Fleet, chaos: Chaos, stop_s: float,
                    codes: dict[str, int | None]) -> None:
    kills = Counter(d.target.split("-")[0] for d in chaos.done if d.kind == "kill")
    report.figures["SIGKILLs"] = dict(sorted(kills.items()))
    report.figures["faults mid-batch"] = (f"{sum(d.mid_batch for d in chaos.done)} of "
                                          f"{sum(d.kind != 'redis' for d in chaos.done)}")
    report.figures["Redis SIGKILLs"] = sum(d.kind == "redis" for d in chaos.done)
    report.figures["SIGSTOPs"] = ", ".join(f"{d.target} {d.end - d.start:.1f} s"
                                           for d in chaos.done if d.kind == "stall")
    for life, tail in chaos.died:
        report.check(False, f"{life.service} (pid {life.proc.pid}) died by itself with "
                            f"{life.code}: {tail}")
    report.figures["stop after SIGTERM"] = f"{stop_s:.1f} s, exit codes {sorted(codes.items())}"
    report.check(stop_s <= STOP_LIMIT_S and all(c == 0 for c in codes.values()),
                 f"SIGTERM: {stop_s:.1f} s (limit {STOP_LIMIT_S}), exit codes {codes}")
