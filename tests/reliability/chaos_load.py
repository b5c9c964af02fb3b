"""The chaos run's workload: its plan, the events (good, repeated, malformed, fed to
``emit --file``), what is expected of them, and the sender that puts them on the stream.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from automations.connection import CONNECTION_ERRORS
from automations.keys import Keys
from tests.reliability.chaos_receiver import HOST

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("automations"))
PREFIX = "chaos"
TOLERATED: tuple[type[BaseException], ...] = (aioredis.ResponseError, *CONNECTION_ERRORS)


@dataclass(frozen=True)
class Plan:
    """One run's size; faults go on while events are sent (or ``seconds``, see ``run``)."""

    name: str
    events: int
    rate: float
    resources: int
    malformed: int
    good: int
    stall_s: float
    drain_timeout_s: float = 90.0
    seed: int = 12
    duplicate_share: float = 0.02
    alert_share: float = 0.05


    @property
    def sending_s(self) -> float:
        """About how long sending takes: the events, the last re-sent ids (up to 5 s later),
        the malformed entries at the same rate and the tail."""
        return self.events / self.rate + 5 + self.malformed / self.rate + 2


SHORT = Plan("short", events=4000, rate=200, resources=800, malformed=300, good=150, stall_s=6)
LONG = Plan("long", events=20_000, rate=750, resources=4000, malformed=5000, good=1000,
            stall_s=10, drain_timeout_s=180)


def event(name: str, resource: str, occurred: datetime, **payload: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "occurred": occurred.isoformat(), "event": name,
            "resource": {"prefect.resource.id": resource}, "related": [], "payload": payload}


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"{}" + b"}" * levels


def _with(data: dict[str, Any], **changes: Any) -> bytes:
    return orjson.dumps({**data, **changes})


def _without(data: dict[str, Any], key: str) -> bytes:
    return orjson.dumps({k: v for k, v in data.items() if k != key})


def _deep_event(data: dict[str, Any], levels: int) -> bytes:
    head = orjson.dumps({k: v for k, v in data.items() if k != "payload"})
    return head[:-1] + b',"payload":' + deep(levels) + b"}"


TOO_DEEP = "nests more than 64 levels"
# (name, expected reason, fields of the raw XADD); each built from a fresh valid event.
MALFORMED: list[tuple[str, str, Callable[[dict[str, Any]], dict[bytes, bytes]]]] = [
    ("broken JSON", "not JSON", lambda e: {b"data": orjson.dumps(e)[:-9]}),
    ("payload 100 deep", TOO_DEEP, lambda e: {b"data": _deep_event(e, 100)}),
    ("payload 300 deep, unwatched name", TOO_DEEP,
     lambda e: {b"data": _deep_event({**e, "event": "chaos.unwatched"}, 300)}),
    ("no occurred", "occurred: required", lambda e: {b"data": _without(e, "occurred")}),
    ("no resource", "resource: Field required", lambda e: {b"data": _without(e, "resource")}),
    ("no data field", "no 'data' field", lambda e: {b"payload": orjson.dumps(e)}),
    ("not an object", "must be a JSON object", lambda e: {b"data": b"[1, 2, 3]"}),
    ("bad id", "id: Input should be a valid UUID", lambda e: {b"data": _with(e, id="chaos-1")}),
    ("bad occurred", "occurred: Input should be a valid datetime",
     lambda e: {b"data": _with(e, occurred="yesterday")}),
    ("far future", "ahead", lambda e: {b"data": _with(e, occurred=(
        datetime.now(UTC) + timedelta(days=2)).isoformat())}),
]
TOO_LARGE = ("1.6 MB event", "at most 1500000 are allowed",
             lambda e: {b"data": _with(e, payload={"x": "a" * 1_600_000})})
# Lines of the ``emit --file`` file that must be refused, with the reason the CLI prints.
BAD_LINES: list[tuple[str, Callable[[dict[str, Any]], bytes]]] = [
    ("JSON", lambda e: orjson.dumps(e)[:-9]),
    (TOO_DEEP, lambda e: _deep_event(e, 100)),
    ("resource", lambda e: _without(e, "resource")),
]


@dataclass
class Workload:
    """What was sent: every good event by id, and every malformed entry with its reason."""

    good: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: int = 0  # XADDs of good events, repeats included
    repeats: int = 0
    malformed: dict[str, tuple[str, str]] = field(default_factory=dict)  # entry id -> (kind, why)
    file_lines: dict[int, str] = field(default_factory=dict)  # bad line -> expected reason
    file_result: tuple[int, str] = (0, "")

    def expected(self) -> dict[str, set[str]]:
        """Automation name -> the keys of its expected firings (event id, or resource)."""
        per_resource: defaultdict[str, set[str]] = defaultdict(set)
        want: dict[str, set[str]] = {"chaos-hook": set(), "chaos-threshold": set(),
                                     "chaos-notify": set()}
        for event_id, data in self.good.items():
            if data["event"] == "chaos.alert":
                want["chaos-notify"].add(event_id)
            else:
                want["chaos-hook"].add(event_id)
                per_resource[data["resource"]["prefect.resource.id"]].add(event_id)
        want["chaos-threshold"] = {r for r, ids in per_resource.items() if len(ids) >= 3}
        return want


def automations_file(port: int) -> list[dict[str, Any]]:
    hook = {"type": "call-webhook", "payload": {"firing": "{{ firing.id }}",
                                                "event": "{{ event.id }}"}}
    match = {"prefect.resource.id": "chaos.*"}
    return [
        {"name": "chaos-hook", "trigger": {"posture": "Reactive", "expect": ["chaos.order"],
                                           "match": match, "threshold": 1, "within": 0},
         "actions": [{**hook, "url": f"http://{HOST}:{port}/hook"}]},
        {"name": "chaos-threshold", "trigger": {
            "posture": "Reactive", "expect": ["chaos.order"], "match": match,
            "for_each": ["prefect.resource.id"], "threshold": 3, "within": 60},
         "actions": [{**hook, "url": f"http://{HOST}:{port}/threshold"}]},
        {"name": "chaos-notify", "trigger": {"posture": "Reactive", "expect": ["chaos.alert"],
                                             "match": match, "threshold": 1, "within": 0},
         "actions": [{"type": "send-notification", "urls": [f"json://{HOST}:{port}/notify"],
                      "subject": "chaos", "body": "firing={{ firing.id }}"}]},
    ]


async def xadd(client: aioredis.Redis, stream: str, entries: list[dict[bytes, bytes]]) -> list[str]:
    """Pipelined XADDs, retried while Redis is away (a repeat of a good event is a duplicate
    the engine drops; a malformed entry's retry is only added if the first did not land)."""
    while True:
        try:
            async with client.pipeline(transaction=False) as pipe:
                for fields in entries:
                    pipe.xadd(stream, fields)  # type: ignore[arg-type]
                ids = await pipe.execute()
            return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        except CONNECTION_ERRORS:
            await asyncio.sleep(0.1)


class Sender:
    """The events of a plan at its rate, then the malformed entries and the good tail."""

    def __init__(self, client: aioredis.Redis, keys: Keys, plan: Plan, directory: Path,
                 env: dict[str, str]) -> None:
        self.client, self.keys, self.plan = client, keys, plan
        self.directory, self.env = directory, env
        self.rng = random.Random(plan.seed + 1)
        self.work = Workload()
        self.tail_sent = asyncio.Event()

    async def run(self) -> None:
        await self._events()
        await self._malformed()
        await self._tail()

    async def _events(self) -> None:
        plan, begun = self.plan, time.monotonic()
        base = datetime.now(UTC)
        tick = max(1, int(plan.rate / 20))  # 20 pipelines a second
        later: list[tuple[int, dict[str, Any]]] = []  # (when, event) to send again
        for start in range(0, plan.events + int(plan.rate * 5), tick):
            await asyncio.sleep(max(0.0, begun + start / plan.rate - time.monotonic()))
            chunk = [self._event(i, base + timedelta(seconds=i / plan.rate))
                     for i in range(start, min(start + tick, plan.events))]
            later += [(start + int(plan.rate * self.rng.uniform(0.2, 5)), e) for e in chunk
                      if self.rng.random() < plan.duplicate_share]
            again = [e for when, e in later if when <= start]
            later = [(when, e) for when, e in later if when > start]
            self.work.repeats += len(again)
            if chunk or again:
                await self._good(chunk + again)

    def _event(self, i: int, occurred: datetime) -> dict[str, Any]:
        name = "chaos.alert" if self.rng.random() < self.plan.alert_share else "chaos.order"
        data = event(name, f"chaos.res.{self.rng.randrange(self.plan.resources)}", occurred, i=i)
        self.work.good[data["id"]] = data
        return data

    async def _good(self, events: list[dict[str, Any]]) -> None:
        await xadd(self.client, self.keys.events,
                   [{b"data": orjson.dumps(e), b"id": e["id"].encode()} for e in events])
        self.work.sent += len(events)

    async def _malformed(self) -> None:
        kinds = [*MALFORMED, TOO_LARGE, TOO_LARGE]
        entries = []
        for n in range(self.plan.malformed):
            kind, why, build = kinds[n] if n < len(kinds) else MALFORMED[n % len(MALFORMED)]
            fields = build(event("chaos.order", "chaos.bad", datetime.now(UTC)))
            entries.append((kind, why, fields))
        for start in range(0, len(entries), 200):
            chunk = entries[start:start + 200]
            ids = await xadd(self.client, self.keys.events, [f for _, _, f in chunk])
            for entry_id, (kind, why, _) in zip(ids, chunk, strict=True):
                self.work.malformed[entry_id] = (kind, why)
            await asyncio.sleep(len(chunk) / self.plan.rate)

    async def _tail(self) -> None:
        """Good events after the malformed ones: half by raw XADD, half (with bad lines among
        them) by ``automations emit --file``. Their resources are new: 1 to 4 events each."""
        now = datetime.now(UTC)
        tail = [event("chaos.order", f"chaos.tail.{i // 3 + i % 2}", now, i=i)
                for i in range(self.plan.good)]
        for data in tail:
            self.work.good[data["id"]] = data
        half = len(tail) // 2
        await self._good(tail[:half])
        self.tail_sent.set()
        items: list[tuple[bytes, str | None]] = [(orjson.dumps(e), None) for e in tail[half:]]
        bad = BAD_LINES * 3
        for n, (why, build) in enumerate(bad):
            items.insert((n + 1) * len(items) // (len(bad) + 1),
                         (build(event("chaos.order", "chaos.bad", now)), why))
        self.work.file_lines = {i + 1: why for i, (_, why) in enumerate(items) if why}
        path = self.directory / "events.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line, _ in items))
        while True:  # exit 4 while Redis is away: send the file again (ids dedupe)
            done = await asyncio.to_thread(
                subprocess.run, [EXE, "emit", "--file", str(path)], cwd=ROOT, env=self.env,
                capture_output=True, text=True, timeout=120)
            if done.returncode != 4:
                break
            await asyncio.sleep(0.5)
        self.work.file_result = (done.returncode, done.stderr)
        self.work.sent += len(tail) - half
