"""``decisions``: what the engine's decision log (``explain``) costs, on and off in one run.

The ``throughput`` measurement (a queued backlog drained by one engine process) with
``AUTOMATIONS_DECISION_LOG`` true and false, alternated (on, off, on, off) so load drifts on a
shared machine hit both alike; each side's fastest run is compared, and the least CPU time an
event took (Redis's, the engine process's) over its runs. At 10 automations 10% of the
events are watched by some trigger (and logged); at 1,000 every event is, by 10 triggers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from bench.harness import Bench, Row
from bench.scenarios.throughput import measure

ROUNDS = 3
ENV = "AUTOMATIONS_DECISION_LOG"


@contextmanager
def decision_log(on: bool) -> Iterator[None]:
    """The engine processes started inside inherit the switch."""
    before = os.environ.get(ENV)
    os.environ[ENV] = "true" if on else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


async def run(bench: Bench) -> list[Row]:
    sizes, count, limit = ((10, 200), 2_000, 20.0) if bench.quick else \
        ((10, 1_000), 30_000, 40.0)
    rounds = 1 if bench.quick else ROUNDS
    rows: list[Row] = []
    for size in sizes:
        runs: dict[bool, list[Row]] = {True: [], False: []}
        for _ in range(rounds):
            for on in (True, False):
                with decision_log(on):
                    runs[on].append(_figures(await measure(bench, size, count, limit=limit)))
        best = {on: _best(found) for on, found in runs.items()}
        for on in (True, False):
            rows.append({"scenario": "decisions", "decision_log": "on" if on else "off",
                         "runs": len(runs[on]), **best[on]})
        rows.append({
            "scenario": "decisions", "case": "with the log / without", "automations": size,
            "ratio": _ratio(best[True]["events_per_second"], best[False]["events_per_second"]),
            "redis_cpu_ratio": _ratio(best[True]["redis_cpu_us_per_event"],
                                      best[False]["redis_cpu_us_per_event"]),
            "engine_cpu_ratio": _ratio(best[True]["engine_cpu_us_per_event"],
                                       best[False]["engine_cpu_us_per_event"]),
        })
    return rows


def _figures(row: Row) -> Row:
    """The throughput row's figures, plus CPU time an event (less sensitive than wall time to
    other load on a shared machine)."""
    keep = ("automations", "events", "seconds", "events_per_second", "interested_per_event",
            "firings")
    events, seconds = row["events"] or 1, row["seconds"]
    return {**{k: row.get(k) for k in keep},
            "redis_cpu_us_per_event": round(row["redis_cpu_percent"] * seconds / events * 1e4, 1),
            "engine_cpu_us_per_event":
                round(row["engines_cpu_percent"] * seconds / events * 1e4, 1)}


def _best(runs: list[Row]) -> Row:
    """The fastest run's wall figures, the least CPU an event seen over the runs."""
    fastest = max(runs, key=lambda r: r["events_per_second"])
    return {**fastest, **{k: min(r[k] for r in runs)
                          for k in ("redis_cpu_us_per_event", "engine_cpu_us_per_event")}}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None
