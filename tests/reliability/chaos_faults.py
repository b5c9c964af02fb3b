"""The chaos run's processes and faults: the services as restartable processes, the
schedule of kills, the Redis kill and the stall, and why an effect was repeated.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from automations.keys import DISPATCH_GROUP, ENGINE_GROUP, Keys
from bench.redis_server import RedisServer
from tests.reliability.chaos_load import EXE, PREFIX, ROOT, TOLERATED, Plan
from tests.reliability.chaos_receiver import Hit

CLAIM_IDLE_MS = 3000
ACTION_TIMEOUT_S = 1.5
STOP_LIMIT_S = 5.0
SERVICE_ENV = {
    "AUTOMATIONS_PREFIX": PREFIX,
    "AUTOMATIONS_PROBE_LOCALHOST": "false",
    "AUTOMATIONS_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
    "AUTOMATIONS_CLAIM_INTERVAL_S": "0.5",
    "AUTOMATIONS_ACTION_TIMEOUT_S": str(ACTION_TIMEOUT_S),
    "AUTOMATIONS_ACTION_RETRY_BASE_S": "0.2",
    "AUTOMATIONS_ACTION_RETRY_MAX_S": "2",
    "AUTOMATIONS_ACTION_MAX_ATTEMPTS": "8",
    "AUTOMATIONS_RECONNECT_MAX_S": "1",
    "AUTOMATIONS_BLOCK_MS": "100",
    "AUTOMATIONS_SHUTDOWN_TIMEOUT_S": "10",
}
TIMED_OUT = re.compile(r"action (\S+) \(.*?failed \(attempt \d+, timeout\)")
SERVICES = ("engine-1", "dispatcher-1", "timer", "engine-2", "dispatcher-2")


@dataclass
class Life:
    """One process of a service, from start to end (``how``: SIGKILL, SIGTERM or self)."""

    service: str
    proc: subprocess.Popen[bytes]
    started: float
    log_from: int = 0  # its service's log size when it started: its own lines come after
    ended: float | None = None
    how: str | None = None
    code: int | None = None


class Fleet:
    """The service processes, each restartable; every life is kept for the checks."""

    def __init__(self, directory: Path, redis_url: str) -> None:
        self.directory = directory
        self.env = {**os.environ, **SERVICE_ENV, "AUTOMATIONS_REDIS_URL": redis_url,
                    "AUTOMATIONS_DATA_DIR": str(directory / "data")}
        self.current: dict[str, Life] = {}
        self.lives: list[Life] = []
        self.generation: Counter[str] = Counter()

    def start(self, service: str) -> Life:
        self.generation[service] += 1
        kind = service.split("-")[0]
        path = self.directory / f"{service}.log"
        log = path.open("ab")
        log_from = log.tell()
        env = {**self.env, "AUTOMATIONS_CONSUMER_NAME": f"{service}.{self.generation[service]}"}
        proc = subprocess.Popen([EXE, "serve", "--only", kind], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        life = Life(service, proc, time.monotonic(), log_from)
        self.current[service] = life
        self.lives.append(life)
        return life

    def kill(self, service: str) -> Life:
        life = self.current[service]
        life.proc.send_signal(signal.SIGKILL)
        life.code = life.proc.wait()
        life.ended, life.how = time.monotonic(), "SIGKILL"
        return life

    def dispatchers(self) -> list[int]:
        return [life.proc.pid for name, life in self.current.items()
                if name.startswith("dispatcher") and life.ended is None]

    def reap(self) -> list[Life]:
        """Processes that ended without being told to: restarted, and returned."""
        died = []
        for service, life in list(self.current.items()):
            if life.ended is None and (code := life.proc.poll()) is not None:
                life.ended, life.how, life.code = time.monotonic(), "self", code
                died.append(life)
                self.start(service)
        return died

    def stop(self) -> tuple[float, dict[str, int | None]]:
        """SIGTERM to all at once; seconds until the last exited, and the exit codes."""
        begun = time.monotonic()
        for life in self.current.values():
            os.kill(life.proc.pid, signal.SIGCONT)  # a stalled one must hear it too
            life.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for service, life in self.current.items():
            try:
                life.code = life.proc.wait(STOP_LIMIT_S * 4)
            except subprocess.TimeoutExpired:
                life.proc.kill()
                life.proc.wait()
            life.ended, life.how = time.monotonic(), "SIGTERM"
            codes[service] = life.code
        return time.monotonic() - begun, codes

    def serving(self) -> bool:
        """Whether every current process has started serving (logged ``serving <kind>``)."""
        return not self.not_serving()

    def not_serving(self) -> list[str]:
        """The services whose current process has not logged ``serving <kind>`` yet, each with
        its process state. Only its own lines count: under load a process can be killed
        before it logged anything, so counting lines against restarts would be wrong."""
        lagging = []
        for service, life in self.current.items():
            with (self.directory / f"{service}.log").open("rb") as log:
                log.seek(life.log_from)
                text = log.read().decode(errors="replace")
            if f"serving {service.split('-')[0]} on" not in text:
                code = life.proc.poll()
                state = f"exited {code}" if code is not None else _proc_state(life.proc.pid)
                lagging.append(f"{service} (process {self.generation[service]}, {state}, "
                               f"started {time.monotonic() - life.started:.0f} s ago)")
        return lagging

    def timed_out(self) -> set[str]:
        """Idempotency keys of actions a dispatcher saw time out (from its log)."""
        found: set[str] = set()
        for service in self.generation:
            if service.startswith("dispatcher"):
                text = (self.directory / f"{service}.log").read_text(errors="replace")
                found.update(TIMED_OUT.findall(text))
        return found

    def log_tail(self, service: str, lines: int = 8) -> str:
        text = (self.directory / f"{service}.log").read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class Fault:
    kind: str  # "kill", "redis", "stall"
    target: str
    at: float  # seconds after the start


@dataclass(frozen=True)
class Done:
    """A fault as it happened: the process (pid) it hit and from when until when."""

    kind: str
    target: str
    pid: int | None
    start: float
    end: float
    mid_batch: bool = False


def schedule(plan: Plan, seconds: float) -> list[Fault]:
    """A kill every 3 to 5 s over the services in turn, Redis killed at 40% and a dispatcher
    stalled at 60% of the run (no kill of it meanwhile)."""
    rng = random.Random(plan.seed)
    faults = [Fault("redis", "redis", seconds * 0.4),
              Fault("stall", "dispatcher-2", seconds * 0.6)]
    stall = (seconds * 0.6 - 1, seconds * 0.6 + plan.stall_s + 1)
    at, turn = 2.0, 0
    while at < seconds:
        target = SERVICES[turn % len(SERVICES)]
        turn += 1
        if target == "dispatcher-2" and stall[0] <= at <= stall[1]:
            continue
        faults.append(Fault("kill", target, at))
        at += rng.uniform(3, 5)
    return sorted(faults, key=lambda f: f.at)


class Chaos:
    """Runs the schedule against the fleet and Redis, keeping a record of each fault."""

    def __init__(self, fleet: Fleet, server: RedisServer, client: aioredis.Redis,
                 stall_s: float) -> None:
        self.fleet, self.server, self.client, self.stall_s = fleet, server, client, stall_s
        self.done: list[Done] = []
        self.died: list[tuple[Life, str]] = []
        self._one = asyncio.Lock()

    async def run(self, faults: list[Fault], started: float, last: asyncio.Event) -> None:
        """The schedule, then (the last fault) a dispatcher killed as the last events come."""
        tasks = [asyncio.create_task(self._last(last))]
        for fault in faults:
            await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
            if fault.kind == "kill":
                await self._kill(fault.target)
            elif fault.kind == "redis":
                await self._redis()
            else:
                tasks.append(asyncio.create_task(self._stall(fault.target)))
        await asyncio.gather(*tasks)

    async def _last(self, last: asyncio.Event) -> None:
        await last.wait()
        await self._kill("dispatcher-1")

    async def watch(self, until: asyncio.Event) -> None:
        """Restart (and remember) any process that ends by itself."""
        while not until.is_set():
            for life in self.fleet.reap():
                self.died.append((life, self.fleet.log_tail(life.service)))
            await asyncio.sleep(0.2)

    async def _busy(self, service: str, timeout: float = 2.0) -> bool:
        """Until ``service`` holds entries it read and has not acked (mid-batch), at most
        ``timeout`` seconds (the timer reads no stream)."""
        kind = service.split("-")[0]
        if kind == "timer":
            return False
        keys = Keys(PREFIX)
        stream, group = ((keys.events, ENGINE_GROUP) if kind == "engine" else
                         (keys.partition(0).firings, DISPATCH_GROUP))
        name = f"{service}.{self.fleet.generation[service]}".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info: Any = await self.client.xpending(stream, group)
                if any(c["name"].startswith(name) and c["pending"] for c in info["consumers"]):
                    return True
            except TOLERATED:
                pass
            await asyncio.sleep(0.01)
        return False

    async def _kill(self, service: str) -> None:
        busy = await self._busy(service)
        async with self._one:  # the last kill may come while a scheduled one runs
            begun = time.monotonic()
            life = self.fleet.kill(service)
            await asyncio.sleep(0.3)
            self.fleet.start(service)
        self.done.append(Done("kill", service, life.proc.pid, begun, time.monotonic(), busy))

    async def _redis(self) -> None:
        begun = time.monotonic()
        proc = self.server.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.server.proc = None
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.server.start)  # same port and directory: the AOF reloads
        self.done.append(Done("redis", "redis", proc.pid, begun, time.monotonic()))

    async def _stall(self, service: str) -> None:
        busy = await self._busy(service)
        begun = time.monotonic()
        pid = self.fleet.current[service].proc.pid
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(self.stall_s)
        os.kill(pid, signal.SIGCONT)
        self.done.append(Done("stall", service, pid, begun, time.monotonic(), busy))

    def last(self) -> float:
        return max(d.end for d in self.done)


def _proc_state(pid: int) -> str:
    """A live process's state letter from ``/proc`` (R running, S sleeping, T stopped...)."""
    try:
        return "state " + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "state unknown"


def classify(earlier: list[Hit], repeat: Hit, faults: list[Done], timed_out: bool) -> str:
    """Why an effect was repeated: ``timeout`` (an earlier request was answered after the
    action timeout, or a dispatcher logged a timeout of this action: the receiver acted, the
    dispatcher saw a failure), ``crash`` (the process
    that acted was SIGKILLed before the repeat: between effect and record), ``stall`` (the
    process that acted, or the one repeating, was SIGSTOPped in between: a stale executor),
    ``redis`` (Redis was killed in between), else ``unexplained``. A stall is ``frozen`` when
    the process froze mid-action, after its last lease check: having acted and not yet
    recorded (past its lease it cannot be told from a dead one, so the action is taken over),
    or with its request on the way (it leaves the moment the process resumes); ``stall`` when
    a stale executor started a copy after it resumed, which the leases must prevent."""
    if timed_out or any(h.answer == "late" for h in earlier):
        return "timeout"
    if any(d.kind == "stall" and d.pid == repeat.sender and 0 <= repeat.at - d.end <= 0.2
           for d in faults):
        # the resumed executor's request left at once: it was past its last lease check when
        # it froze (mid-request), not a copy started after resuming (which re-checks the lease)
        return "frozen"
    for hit in earlier:
        if any(d.kind == "stall" and d.pid == hit.sender and 0 <= hit.at - d.end <= 0.2
               for d in faults):
            # the earlier effect was that frozen request: its record is then refused (fenced),
            # so whoever holds the lease next runs the action again, the same process too
            return "frozen"
        if any(d.kind == "stall" and d.pid == hit.sender and d.pid != repeat.sender
               # (a request written just before the freeze may arrive just after it)
               and d.start >= hit.at - 0.2 and d.start <= repeat.at for d in faults):
            return "frozen"
    for kind in ("kill", "stall", "redis"):
        for hit in earlier:
            who = {hit.sender, repeat.sender} if kind == "stall" else {hit.sender}
            if any(d.kind == kind and (kind == "redis" or d.pid in who)
                   and d.end >= hit.at and d.start <= repeat.at for d in faults):
                return "crash" if kind == "kill" else kind
    return "unexplained"
