"""``realistic``: Prefect flow-run event streams against the automations users write.

Runs of many deployments, 8 events each (flow-run Scheduled, Pending, Running; two task runs
Running then Completed, the second Failed in a failing run; flow-run Completed, Failed or
Crashed), Prefect-shaped: the run as resource, its flow, deployment, work queue, work pool and
tags as related, state payloads, ``follows`` chaining each run's states. Their ``occurred``
spread over the last half hour or more, so windows of minutes behave as in production.

The automations target a universe of ``size / 2`` deployments (tags ``team-<d // 5>``), of
which the stream runs only the first ``BUSY``: a user with ten times the automations has ten
times the deployments, not ten times the events, so the firing rate stays the same while every
event of a name is looked at by ten times the candidates. The kinds, per block of 40:

- notify on Failed/Crashed of one deployment (12) or of one team tag (4), ``within 0``;
- 3 failures in 10 minutes of a team tag, ``for_each`` deployment (8);
- "stuck in Running": Completed/Failed/Crashed/Cancelled expected within 15 minutes after
  Running, ``for_each`` flow run, one deployment (15); no timer runs, and no run lasts
  15 minutes, so these arm and disarm deadlines without firing;
- run a deployment when another one completes (1).

The failure rate (``FAILURE_RATE``) and the mix are tuned for about one firing per 100 events.
The bare consumer is measured on the same encoded events right before each measurement (the
median of three runs). Each size runs with the decision log on (the default) and off
(``AUTOMATIONS_DECISION_LOG=false``): its ``missed`` lists name every automation a name
matched, so they grow with the automations.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from actions.models import RunDeployment, SendNotification
from automations.keys import Keys
from automations.models import Automation
from bench.drive import drain_backlog, read_firings, start_engines
from bench.harness import Bench, Row, reset_slowlog, slowest_ms
from bench.procs import ServiceProcess, stop_all
from bench.scenarios.ceiling import GROUP, consume
from bench.workload import encode, ensure_group, push
from triggers.models import EventTrigger, Posture

TARGET_CEILING_RATIO = 0.40
TARGET_COST_RATIO = 1.5
BUSY = 200  # deployments with runs in the stream
FAILURE_RATE = 0.03
CRASHED_SHARE = 0.2  # of the failures
EVENTS_PER_RUN = 8
MIX = (("notify-deployment", 12), ("notify-tag", 4), ("failures-3-in-10m", 8),
       ("stuck-running", 15), ("chain", 1))
KINDS = tuple(kind for kind, n in MIX for _ in range(n))
FINAL_STATES = ("prefect.flow-run.Completed", "prefect.flow-run.Failed",
                "prefect.flow-run.Crashed", "prefect.flow-run.Cancelled")
FAILED = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
POOLS = (("k8s-prod", "kubernetes"), ("k8s-staging", "kubernetes"), ("ecs-batch", "ecs"),
         ("local", "process"))
DECISION_LOG_ENV = "AUTOMATIONS_DECISION_LOG"
NAMESPACE = uuid.UUID("6f1c2b1e-94c5-4c2e-9d0a-0b3e7a1c5d42")


def _id(kind: str, number: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{kind}-{number}")


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def team(deployment: int) -> str:
    return f"team-{deployment // 5}"


def deployment_related(deployment: int) -> list[dict[str, str]]:
    """The related resources of a run of ``deployment``: flow, deployment, queue, pool, tags."""
    pool, pool_type = POOLS[deployment % len(POOLS)]
    flow = deployment // 3
    return [
        {"prefect.resource.id": f"prefect.flow.{_id('flow', flow)}",
         "prefect.resource.role": "flow", "prefect.resource.name": f"etl-flow-{flow}"},
        {"prefect.resource.id": f"prefect.deployment.{_id('deployment', deployment)}",
         "prefect.resource.role": "deployment",
         "prefect.resource.name": f"etl-flow-{flow}/deployment-{deployment}"},
        {"prefect.resource.id": f"prefect.work-queue.{_id('queue', deployment % 8)}",
         "prefect.resource.role": "work-queue", "prefect.resource.name": "default"},
        {"prefect.resource.id": f"prefect.work-pool.{_id('pool', deployment % len(POOLS))}",
         "prefect.resource.role": "work-pool", "prefect.resource.name": pool,
         "prefect.work-pool.type": pool_type},
        {"prefect.resource.id": f"prefect.tag.{team(deployment)}", "prefect.resource.role": "tag"},
        {"prefect.resource.id": "prefect.tag.prod" if deployment % 3 else "prefect.tag.dev",
         "prefect.resource.role": "tag"},
    ]


def _state(kind: str, at: datetime) -> dict[str, Any]:
    name = kind.capitalize()
    message = "Flow run encountered an exception: ValueError('bad row')" \
        if kind in ("FAILED", "CRASHED") else ""
    return {"type": kind, "name": name, "message": message, "timestamp": at.isoformat(),
            "state_details": {"scheduled_time": None, "cache_key": None, "pause_timeout": None,
                              "retriable": None}}


def state_event(
    name: str, resource: dict[str, str], related: list[dict[str, str]], occurred: datetime,
    event_id: uuid.UUID, before: str | None, follows: uuid.UUID | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Prefect state-change event (``prefect.flow-run.*`` or ``prefect.task-run.*``)."""
    state = name.rsplit(".", 1)[1].upper()
    return {
        "id": str(event_id), "occurred": occurred.isoformat(), "event": name,
        "resource": {**resource, "prefect.state-message": "", "prefect.state-name":
                     state.capitalize(), "prefect.state-timestamp": occurred.isoformat(),
                     "prefect.state-type": state},
        "related": related,
        "payload": {"intended": {"from": before, "to": state},
                    "initial_state": _state(before, occurred) if before else None,
                    "validated_state": _state(state, occurred), **(extra or {})},
        "follows": str(follows) if follows else None,
    }


def run_events(
    rng: random.Random, deployment: int, start: datetime, failed: bool
) -> list[dict[str, Any]]:
    """The 8 events of one flow run of ``deployment`` starting at ``start``."""
    run_id = _uuid(rng)
    related = deployment_related(deployment)
    flow_run = {"prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.name": f"run-{run_id.hex[:10]}", "prefect.run-count": "1"}
    final = ("prefect.flow-run.Crashed" if rng.random() < CRASHED_SHARE else
             "prefect.flow-run.Failed") if failed else "prefect.flow-run.Completed"
    duration = rng.uniform(20, 600)
    steps = [("prefect.flow-run.Scheduled", 0.0), ("prefect.flow-run.Pending", 30.0),
             ("prefect.flow-run.Running", 32.0), (final, 32.0 + duration)]
    events, previous, before = [], None, None
    for name, offset in steps[:3]:
        event_id = _uuid(rng)
        events.append(state_event(name, flow_run, related, start + timedelta(seconds=offset),
                                  event_id, before, previous))
        previous, before = event_id, name.rsplit(".", 1)[1].upper()
    task_related = [{"prefect.resource.id": flow_run["prefect.resource.id"],
                     "prefect.resource.role": "flow-run",
                     "prefect.resource.name": flow_run["prefect.resource.name"]}, *related]
    for task in range(2):
        task_id = _uuid(rng)
        task_run = {"prefect.resource.id": f"prefect.task-run.{task_id}",
                    "prefect.resource.name": f"{('extract', 'load')[task]}-{task_id.hex[:3]}",
                    "prefect.orchestration": "client"}
        detail = {"task_run": {"name": task_run["prefect.resource.name"],
                               "task_key": f"{('extract', 'load')[task]}-7d1f4e",
                               "dynamic_key": str(task), "run_count": 1, "tags": []}}
        end = "Failed" if failed and task == 1 else "Completed"
        task_previous: uuid.UUID | None = None
        for phase, name in enumerate(("Running", end)):
            at = start + timedelta(seconds=33 + duration * (task + phase) / 2.2)
            event_id = _uuid(rng)
            events.append(state_event(f"prefect.task-run.{name}", task_run, task_related, at,
                                      event_id, "RUNNING" if phase else "PENDING",
                                      task_previous, detail))
            task_previous = event_id
    events.append(state_event(final, flow_run, related, start + timedelta(seconds=steps[3][1]),
                              _uuid(rng), "RUNNING", previous))
    return events


def build_flow_run_events(
    count: int, *, busy: int = BUSY, seed: int = 23, end: datetime | None = None
) -> list[dict[str, Any]]:
    """About ``count`` events (whole runs) of ``busy`` deployments in ``occurred`` order, the
    runs starting over ``max(30 min, count * 30 ms)`` and all over by ``end`` (now)."""
    rng = random.Random(seed)
    span = max(1800.0, count * 0.03)
    base = (end or datetime.now(UTC)) - timedelta(seconds=span + 1)
    events: list[dict[str, Any]] = []
    for _ in range(count // EVENTS_PER_RUN):
        start = base + timedelta(seconds=rng.uniform(0, span - 640))
        events += run_events(rng, rng.randrange(busy), start,
                             failed=rng.random() < FAILURE_RATE)
    events.sort(key=lambda e: e["occurred"])
    return events


def build_realistic_automation(index: int, rng: random.Random, deployments: int) -> Automation:
    """Automation ``index``: kind ``KINDS[index % 40]`` on a deployment or team tag drawn from
    a universe of ``deployments``."""
    kind = KINDS[index % len(KINDS)]
    deployment = rng.randrange(deployments)
    on_deployment = {"prefect.resource.role": "deployment",
                     "prefect.resource.id": f"prefect.deployment.{_id('deployment', deployment)}"}
    on_team = {"prefect.resource.role": "tag",
               "prefect.resource.id": f"prefect.tag.{team(deployment)}"}
    runs = {"prefect.resource.id": "prefect.flow-run.*"}
    notify = SendNotification(block="slack-oncall", body="{{ flow_run.name }} is {{ event.event }}")
    trigger: EventTrigger
    actions: list[Any] = [notify]
    if kind in ("notify-deployment", "notify-tag"):
        trigger = EventTrigger(id=_uuid(rng), expect=set(FAILED), match=runs,
                               match_related=on_deployment if kind == "notify-deployment"
                               else on_team, posture=Posture.Reactive, threshold=1)
    elif kind == "failures-3-in-10m":
        trigger = EventTrigger(id=_uuid(rng), expect={"prefect.flow-run.Failed"}, match=runs,
                               match_related=on_team,
                               for_each={"related:deployment:prefect.resource.id"},
                               posture=Posture.Reactive, threshold=3,
                               within=timedelta(minutes=10))
    elif kind == "stuck-running":
        trigger = EventTrigger(id=_uuid(rng), after={"prefect.flow-run.Running"},
                               expect=set(FINAL_STATES), match=runs,
                               match_related=on_deployment, for_each={"prefect.resource.id"},
                               posture=Posture.Proactive, threshold=1,
                               within=timedelta(minutes=15))
    else:
        trigger = EventTrigger(id=_uuid(rng), expect={"prefect.flow-run.Completed"}, match=runs,
                               match_related=on_deployment, posture=Posture.Reactive,
                               threshold=1)
        actions = [RunDeployment(deployment_id=_id("deployment", rng.randrange(deployments)))]
    return Automation(id=_uuid(rng), name=f"{kind}-{index:05d}", trigger=trigger,
                      actions=actions, tags=["realistic", kind])


def build_realistic_automations(count: int, *, seed: int = 29) -> list[Automation]:
    rng = random.Random(seed)
    deployments = max(BUSY, count // 2)
    return [build_realistic_automation(i, rng, deployments) for i in range(count)]


def name_matched(automations: list[Automation], encoded: list[tuple[bytes, bytes]]) -> float:
    """Average number of triggers whose ``expect`` or ``after`` names an event's name: the
    candidates the engine's name index hands over for the resource checks."""
    names = Counter(orjson.loads(data)["event"] for _, data in encoded)
    per_name: Counter[str] = Counter()
    for automation in automations:
        trigger = automation.trigger
        assert isinstance(trigger, EventTrigger)
        for name in trigger.expect | trigger.after:
            per_name[name] += 1
    return sum(per_name[name] * n for name, n in names.items()) / max(1, len(encoded))


async def commandstats_usec(bench: Bench, commands: tuple[str, ...]) -> float:
    """Microseconds Redis spent in ``commands`` since start (INFO commandstats)."""
    stats: Any = await bench.redis.info("commandstats")
    return float(sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in commands))


async def bare_consumer_rate(bench: Bench, encoded: list[tuple[bytes, bytes]]) -> float:
    """The bare consumer's events/s (XREADGROUP + XACK, no decoding) on these events."""
    stream = f"{bench.new_prefix('realistic-ceiling')}:events"
    await ensure_group(bench.redis, stream, GROUP)
    await push(bench.redis, stream, encoded)
    start = time.perf_counter()
    consumed = await consume(bench.redis, stream)
    elapsed = time.perf_counter() - start
    await bench.redis.delete(stream)
    return consumed / elapsed


async def start_engine(bench: Bench, prefix: str, automations: list[Automation],
                       decision_log: bool) -> list[ServiceProcess]:
    """One engine; ``decision_log`` False sets ``AUTOMATIONS_DECISION_LOG=false`` for it."""
    saved = os.environ.get(DECISION_LOG_ENV)
    if not decision_log:
        os.environ[DECISION_LOG_ENV] = "false"
    try:
        return await start_engines(bench, prefix, automations)
    finally:
        if saved is None:
            os.environ.pop(DECISION_LOG_ENV, None)
        else:
            os.environ[DECISION_LOG_ENV] = saved


async def measure(bench: Bench, size: int, encoded: list[tuple[bytes, bytes]], *,
                  limit: float, decision_log: bool = True) -> Row:
    prefix = bench.new_prefix(f"real{size}")
    automations = build_realistic_automations(size)
    kinds = {str(a.id): a.tags[1] for a in automations}
    engines = await start_engine(bench, prefix, automations, decision_log)
    await reset_slowlog(bench.redis)
    scripts = ("evalsha", "eval", "evalsha_ro", "fcall")
    script_usec = await commandstats_usec(bench, scripts)
    try:
        drain = await drain_backlog(bench, prefix, engines, encoded, limit=limit)
    finally:
        await stop_all(engines)
    script_usec = await commandstats_usec(bench, scripts) - script_usec
    firings = await read_firings(bench.redis, Keys(prefix).outboxes)
    await bench.cleanup(prefix)
    handled, seconds = drain.handled, drain.seconds
    eps = handled / seconds if seconds > 0 else 0.0
    by_kind = Counter(kinds.get(str(f["automation_id"]), "?") for f in firings)
    return {
        "scenario": "realistic", "automations": size,
        "decision_log": "on" if decision_log else "off",
        "events": handled,
        "bytes_per_event": round(sum(len(d) for _, d in encoded) / len(encoded)),
        "name_matched_per_event": round(name_matched(automations, encoded), 1),
        "seconds": round(seconds, 3), "events_per_second": round(eps),
        "us_per_event": round(1e6 / eps, 1) if eps else None,
        "redis_cpu_us_per_event": round(drain.redis_cpu * seconds * 1e6 / handled, 1)
        if handled else None,
        "redis_script_us_per_event": round(script_usec / handled, 1) if handled else None,
        "firings": len(firings),
        "firings_per_100_events": round(100 * len(firings) / handled, 2) if handled else None,
        "firings_by_kind": ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())),
        "load_seconds": engines[0].ready.get("load_seconds"),
        "slowest_redis_command_ms": await slowest_ms(bench.redis), **drain.figures(),
    }


def cost_ratio(small: Row, large: Row) -> Row:
    """The per-event time of the larger size over the smaller's, against the target."""
    ratio = large["us_per_event"] / small["us_per_event"]
    return {
        "scenario": "realistic",
        "case": f"time per event, {large['automations']:,} / {small['automations']:,} "
                "automations",
        "automations": large["automations"], "decision_log": large["decision_log"],
        "ratio": round(ratio, 2), "target": f"<= {TARGET_COST_RATIO}x at 10,000 / 1,000",
        "target_met": ratio <= TARGET_COST_RATIO if large["automations"] >= 10_000 else None,
    }


async def run(bench: Bench) -> list[Row]:
    """Both sizes with the decision log on (the default), then off: its near-miss lists
    grow with the automations a name matches."""
    sizes, count, limit = ((100, 1_000), 2_000, 20.0) if bench.quick else \
        ((1_000, 10_000), 60_000, 180.0)
    encoded = encode(build_flow_run_events(count))
    rows: list[Row] = []
    for decision_log in (True, False):
        measured = []
        for size in sizes:
            # the bare consumer right before each measurement, the median of three: on a
            # shared machine one short run swings by +-30%
            ceilings = sorted([await bare_consumer_rate(bench, encoded) for _ in range(3)])
            row = await measure(bench, size, encoded, limit=limit, decision_log=decision_log)
            row["ceiling_runs"] = ", ".join(f"{c:,.0f}" for c in ceilings)
            row["ceiling_events_per_second"] = round(ceilings[1])
            row["ratio_to_ceiling"] = round(row["events_per_second"] / ceilings[1], 3)
            measured.append(row)
        for row in measured:
            if row["automations"] == 1_000:
                row["target"] = f">= {TARGET_CEILING_RATIO:.0%} of the bare consumer"
                row["target_met"] = row["ratio_to_ceiling"] >= TARGET_CEILING_RATIO
        rows += measured
        if measured[0]["us_per_event"] and measured[1]["us_per_event"]:
            rows.append(cost_ratio(*measured))
    return rows
