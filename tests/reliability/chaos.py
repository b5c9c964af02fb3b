"""A chaos run: real services on a real Redis, killed, stalled and starved on a schedule, and
then the books checked. ``python -m tests.reliability.chaos [--long] [--seconds N]
[--write-docs]``; ``tests/reliability/test_chaos.py`` runs the short plan in CI.

Two engines, two dispatchers and a timer run as ``automations serve --only <service>``
processes against a ``redis-server`` with AOF ``everysec`` on a fixed port. Three automations
(a reactive webhook, a threshold of 3 in 60 s per resource with a webhook, an Apprise
notification) point at a receiver here that answers 500 to 5% of requests and answers after the
action timeout to 1% (it acted: the client gave up). Events go in at a fixed rate, some sent
twice; then malformed entries and good ones, by raw XADD and by ``automations emit --file``.
Meanwhile, every 3 to 5 s a service process is SIGKILLed and restarted, Redis is SIGKILLed and
restarted once, and a dispatcher is SIGSTOPped for longer than the claim idle time.

The checks (``Report.failures``): no expected firing missing and none twice, each announced
once, every action's effect at the receiver, repeats only in the two documented windows (a
timeout after the receiver acted; a crash of the dispatcher that acted before it recorded),
no process dying by itself, every malformed entry refused with a precise reason, a drain after
the last fault bounded by the work (not by a 30 s lease), and SIGTERM stopping all in seconds.
Expectations are counted from the events sent, as the three triggers define them: one firing
per distinct ``chaos.order`` and ``chaos.alert`` id, one per resource with at least 3
distinct ``chaos.order`` ids (every resource's events fall within one 60 s window).

The parts: ``chaos_load`` (plan, events, sender), ``chaos_receiver``, ``chaos_faults``
(processes, schedule, why a repeat happened), ``chaos_checks`` (books, drain, checks); this
module runs them and writes the figures into ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from automations.keys import ANNOUNCE_GROUP, DISPATCH_GROUP, ENGINE_GROUP, Keys
from bench.redis_server import RedisServer, free_port
from tests.reliability.chaos_checks import (
    DRAIN_LIMIT_S,
    Books,
    Report,
    check_effects,
    check_firings,
    check_processes,
    check_refusals,
    drain,
)
from tests.reliability.chaos_faults import SERVICES, Chaos, Fleet, schedule
from tests.reliability.chaos_load import (
    EXE,
    LONG,
    PREFIX,
    ROOT,
    SHORT,
    TOLERATED,
    Plan,
    Sender,
    Workload,
    automations_file,
)
from tests.reliability.chaos_receiver import Receiver

DOC = ROOT / "docs" / "reliability.md"


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except TOLERATED:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout:g} s")
        await asyncio.sleep(0.1)


async def prepare(client: aioredis.Redis, keys: Keys, fleet: Fleet, port: int) -> dict[str, str]:
    """Apply the automations, start every service and wait for its consumer group; returns
    automation id -> name."""
    path = fleet.directory / "automations.json"
    path.write_bytes(orjson.dumps(automations_file(port)))
    done = subprocess.run([EXE, "apply", str(path)], cwd=ROOT, env=fleet.env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"automations apply failed: {done.stderr}")
    for service in SERVICES:
        fleet.start(service)

    async def groups() -> bool:
        events: Any = await client.xinfo_groups(keys.events)
        firings: Any = await client.xinfo_groups(keys.partition(0).firings)
        names = {g["name"] for g in [*events, *firings]}
        return {n.encode() for n in (ENGINE_GROUP, DISPATCH_GROUP, ANNOUNCE_GROUP)} <= {
            n if isinstance(n, bytes) else n.encode() for n in names}

    await until(groups, 60, "consumer groups")
    return await _names(client, keys)


async def _timed(work: Awaitable[None]) -> float:
    await work
    return time.monotonic()


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()
    return wrapped


async def _names(client: aioredis.Redis, keys: Keys) -> dict[str, str]:
    names: Any = await client.hgetall(keys.automation_names)
    return {automation_id.decode(): name.decode() for name, automation_id in names.items()}


async def run(plan: Plan, directory: Path, seconds: float | None = None) -> Report:
    """One chaos run in ``directory`` (logs, Redis files); the report holds every failure."""
    begun = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory / "redis", port=free_port(),
                         extra=["--appendonly", "yes", "--appendfsync", "everysec"])
    server.start()
    fleet = Fleet(directory, server.url)
    receiver = Receiver(plan.seed, fleet.dispatchers)
    receiver.start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=10)
    keys = Keys(PREFIX)
    try:
        names = await prepare(client, keys, fleet, receiver.port)
        chaos = Chaos(fleet, server, client, plan.stall_s)
        sender = Sender(client, keys, plan, directory, fleet.env)
        watching = asyncio.Event()
        watcher = asyncio.create_task(chaos.watch(watching))
        started = time.monotonic()
        faults = schedule(plan, seconds or plan.sending_s - 3)
        ended = await asyncio.gather(_timed(sender.run()),
                                     _timed(chaos.run(faults, started, sender.tail_sent)))
        books = Books(client, keys, names)
        drained = await drain(books, receiver, sender.work, max(ended), plan.drain_timeout_s)
        watching.set()
        await watcher
        try:  # a fair SIGTERM: every process has started
            await until(_async(fleet.serving), 60, "every service serving")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {'; '.join(fleet.not_serving())}") from None
        stop_s, codes = fleet.stop()
        report = await reckon(plan, books, receiver, sender.work, chaos)
        record(directory, receiver, chaos, started)
        check_processes(report, fleet, chaos, stop_s, codes)
        report.figures["faults"] = f"{len(chaos.done)} in {chaos.last() - started:.1f} s"
        report.figures["drain after the last fault"] = (
            f"{drained:.1f} s" if drained is not None else f"not within {plan.drain_timeout_s} s")
        report.check(drained is not None and drained <= DRAIN_LIMIT_S,
                     f"drain after the last fault: {report.figures['drain after the last fault']}"
                     f" (limit {DRAIN_LIMIT_S} s)")
        report.figures["sending"] = f"{ended[0] - started:.1f} s"
        report.figures["whole run"] = f"{time.monotonic() - begun:.1f} s"
        return report
    finally:
        for life in fleet.current.values():
            if life.proc.poll() is None:
                os.kill(life.proc.pid, signal.SIGCONT)
                life.proc.kill()
                life.proc.wait()
        receiver.stop()
        await client.aclose()
        server.stop()


def record(directory: Path, receiver: Receiver, chaos: Chaos, started: float) -> None:
    """Every request and fault, times from the start, for a post-mortem of a failed check."""
    (directory / "hits.jsonl").write_bytes(b"".join(
        orjson.dumps({**asdict(h), "at": round(h.at - started, 3)}) + b"\n"
        for h in receiver.snapshot()))
    (directory / "faults.json").write_bytes(orjson.dumps([
        {**asdict(d), "start": round(d.start - started, 3), "end": round(d.end - started, 3)}
        for d in chaos.done], option=orjson.OPT_INDENT_2))


async def reckon(plan: Plan, books: Books, receiver: Receiver, work: Workload,
                 chaos: Chaos) -> Report:
    report = Report(plan)
    await books.read_firings()
    report.figures["events"] = (f"{len(work.good)} distinct good events ({work.sent} sent, "
                                f"{work.repeats} re-sent ids)")
    check_firings(report, books, work, await books.announcements())
    check_effects(report, books, receiver.snapshot(), chaos.done, chaos.fleet.timed_out(),
                  await books.dead_firings(), await books.maybe_delivered())
    check_refusals(report, work, await books.dead_events())
    return report


# -- the command and the docs ------------------------------------------------------------------
SECTION = "## Chaos runs"
START, END = "<!-- chaos:start -->", "<!-- chaos:end -->"


def table(report: Report, command: str) -> str:
    rows = "\n".join(f"| {name} | {value} |" for name, value in report.figures.items())
    outcome = ("every check held" if not report.failures else
               "failed checks: " + "; ".join(f[:200] for f in report.failures))
    return (f"{START}\n`{command}` ({report.plan.events:,} events at "
            f"{report.plan.rate:g}/s, {datetime.now(UTC):%Y-%m-%d}): {outcome}.\n\n"
            f"| figure | measured |\n| --- | --- |\n{rows}\n{END}")


def write_docs(report: Report, command: str) -> None:
    """Replace the figures between the markers of the ``## Chaos runs`` section (added at
    the end of the file if it is missing); nothing else in the file changes."""
    text = DOC.read_text() if DOC.exists() else "# Reliability\n"
    figures = table(report, command)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + figures + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{figures}\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.chaos",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--long", action="store_true", help="the long plan (several minutes)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="how long faults go on (default: while events are sent)")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"write the figures into {DOC.relative_to(ROOT)} ({SECTION})")
    args = parser.parse_args(argv)
    plan = LONG if args.long else SHORT
    directory = Path(tempfile.mkdtemp(prefix="chaos-"))
    report = asyncio.run(run(plan, directory, args.seconds))
    print(report.text())
    print(f"logs: {directory}")
    if args.write_docs:
        command = "python -m tests.reliability.chaos" + " --long" * args.long + (
            f" --seconds {args.seconds:g}" if args.seconds else "") + " --write-docs"
        write_docs(report, command)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
