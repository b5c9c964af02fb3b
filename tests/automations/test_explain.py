"""``automations explain`` against a real Redis: the decision log the engine writes, the read
side (``insight.explain``) and the CLI (JSON keys, exit codes)."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from typer.testing import CliRunner

from automations.cli.app import app
from automations.cli.common import EXIT_NOT_FOUND, EXIT_UNAVAILABLE
from automations.dispatch.dispatcher import Dispatcher
from automations.engine.decisions import read_back
from automations.insight.explain import explain_automation, explain_event
from automations.models import Automation
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from bench.redis_server import free_port
from tests.automations.engine_harness import Clock, Harness, at, automation, event

FAILED = "prefect.flow-run.Failed"
RID = "prefect.resource.id"


def threshold3(name: str = "three-failures") -> Automation:
    return automation({"expect": [FAILED], "threshold": 3, "within": 600, "for_each": [RID],
                       "match": {"env": "prod"}}, name=name)


def immediate(name: str = "every-failure") -> Automation:
    return automation({"expect": [FAILED]}, name=name)


def proactive(name: str = "no-finish") -> Automation:
    return automation({"posture": "Proactive", "after": ["job.started"],
                       "expect": ["job.finished"], "within": 30, "for_each": [RID]}, name=name)


async def setup(h: Harness, *automations: Automation) -> list[Automation]:
    await AutomationStore(h.redis, h.keys).apply(list(automations))
    await h.load(*automations)
    return list(automations)


async def test_counted_event_shows_its_bucket(h: Harness, clock: Clock) -> None:
    autos = await setup(h, threshold3())
    first, second = (event(FAILED, i, "flow-run.1", labels={"env": "prod"}) for i in (0, 5))
    await h.send(first, second)
    result = await explain_event(h.redis, h.keys, autos, str(second.id), clock.now)
    assert result.event == FAILED and result.entry_id and result.processed
    assert result.logged_at is not None
    (verdict,) = result.automations
    assert verdict.counted and not verdict.fired and verdict.source == "decision log"
    (trigger,) = verdict.triggers
    bucket = trigger.bucket
    assert bucket is not None and (bucket.count, bucket.threshold) == (2, 3)
    assert bucket.labels == {RID: "flow-run.1"} and bucket.start < bucket.end
    assert "bucket 2/3 in [" in verdict.reason
    assert [n.matched for n in trigger.names if n.kind == "expect"] == [(FAILED,)]


async def test_near_miss_names_the_failing_label(h: Harness, clock: Clock) -> None:
    autos = await setup(h, threshold3())
    miss = event(FAILED, 0, labels={"env": "dev"})
    await h.send(miss)
    result = await explain_event(h.redis, h.keys, autos, str(miss.id), clock.now)
    (verdict,) = result.automations
    assert not verdict.counted and verdict.near_miss
    assert "match.env: 'dev' does not match ['prod']" in verdict.reason
    (failed,) = [c for c in verdict.triggers[0].labels if not c.matched]
    assert (failed.label, failed.value) == ("env", "dev")


async def test_name_matching_nothing(h: Harness, clock: Clock) -> None:
    autos = await setup(h, threshold3())
    other = event("prefect.flow-run.Completed", 0)
    await h.send(other)
    result = await explain_event(h.redis, h.keys, autos, str(other.id), clock.now)
    assert result.automations == [] and result.logged_at is None
    assert any("no automation has a trigger" in n for n in result.notes)
    assert [d async for d in read_back(h.redis, h.keys, scan=10)] == []  # cost nothing


async def test_proactive_deadline(h: Harness, clock: Clock) -> None:
    autos = await setup(h, proactive())
    start = event("job.started", 0, "job.1")
    await h.send(start)
    result = await explain_event(h.redis, h.keys, autos, str(start.id), clock.now)
    (verdict,) = result.automations
    assert verdict.counted and "opens a window (after)" in verdict.reason
    bucket = verdict.triggers[0].bucket
    assert bucket is not None and bucket.deadline == bucket.end == at(30)
    state = await explain_automation(h.redis, h.keys, autos[0], clock.now)
    assert [(b.deadline, b.count) for b in state.buckets] == [(at(30), 0)]


async def test_firing_is_shown_with_its_actions(h: Harness, clock: Clock,
                                                settings: Settings) -> None:
    autos = await setup(h, immediate(), threshold3())
    e = event(FAILED, 0, labels={"env": "prod"})
    await h.send(e)
    async with Dispatcher(h.redis, settings, ports=build_ports(h.redis, settings, h.keys),
                          keys=h.keys) as dispatcher:
        await dispatcher.drain()
    result = await explain_event(h.redis, h.keys, autos, str(e.id), clock.now)
    by_name = {v.automation: v for v in result.automations}
    fired = by_name["every-failure"]
    assert fired.counted and fired.fired and not by_name["three-failures"].fired
    (firing,) = fired.firings
    assert firing.event_id == str(e.id) and firing.state == "Triggered"
    assert firing.actions is not None
    assert [(a.type, a.outcome) for a in firing.actions] == [("do-nothing", "executed")]
    await h.redis.delete(h.keys.partition(0).firings)  # trimmed: the decision log says it fired
    again = await explain_event(h.redis, h.keys, autos, str(e.id), clock.now)
    assert [(v.automation, v.fired, v.firings) for v in again.automations] == \
        [("every-failure", True, []), ("three-failures", False, [])]


async def test_explain_name_state(h: Harness, clock: Clock) -> None:
    (a,) = await setup(h, threshold3())
    counted = [event(FAILED, i, f"flow-run.{i}", labels={"env": "prod"}) for i in range(2)]
    miss = event(FAILED, 3, labels={"env": "dev"})
    await h.send(*counted, miss)
    state = await explain_automation(h.redis, h.keys, a, clock.now)
    assert sorted(b.labels[RID] for b in state.buckets) == ["flow-run.0", "flow-run.1"]
    assert all((b.count, b.threshold, b.open) == (1, 3, True) for b in state.buckets)
    assert [r.event_id for r in state.counted] == [str(e.id) for e in reversed(counted)]
    assert [r.event_id for r in state.near_misses] == [str(miss.id)]
    assert state.firings == [] and state.decisions_scanned == 3


async def test_stream_entry_id_and_log_fallback(h: Harness, clock: Clock) -> None:
    autos = await setup(h, threshold3())
    e = event(FAILED, 0, labels={"env": "prod"})
    await h.send(e)
    by_id = await explain_event(h.redis, h.keys, autos, str(e.id), clock.now)
    assert by_id.entry_id is not None
    by_entry = await explain_event(h.redis, h.keys, autos, by_id.entry_id, clock.now)
    assert by_entry.event_id == str(e.id) and by_entry.automations[0].counted
    await h.redis.delete(h.keys.decisions)  # trimmed away: found by scanning the events stream
    scanned = await explain_event(h.redis, h.keys, autos, str(e.id), clock.now)
    assert scanned.entry_id == by_id.entry_id and scanned.automations[0].counted
    assert scanned.automations[0].source == "evaluated now"


async def test_off_switch_writes_nothing(redis: Any, settings: Settings, clock: Clock) -> None:
    off = Harness(redis, settings.model_copy(update={"decision_log": False}), clock)
    await setup(off, immediate())
    await off.send(event(FAILED, 0))
    assert await redis.exists(off.keys.decisions) == 0


async def test_retention_is_bounded(redis: Any, settings: Settings, clock: Clock) -> None:
    small = Harness(redis, settings.model_copy(update={"decision_log_maxlen": 1000}), clock)
    await setup(small, threshold3())
    await small.send(*[event(FAILED, 0, labels={"env": "dev"}) for _ in range(2500)])
    length = await redis.xlen(small.keys.decisions)
    assert 1000 <= length < 1200  # approximate MAXLEN: whole stream nodes (100 entries)


# -- the CLI ---------------------------------------------------------------------------------


async def cli(env: dict[str, str], *args: str, code: int = 0) -> Any:
    """The CLI in a thread (it runs its own event loop)."""
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(app, ["explain", *args], env=env))
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


async def test_cli_json_and_text(h: Harness, env: dict[str, str]) -> None:
    await setup(h, immediate(), threshold3())
    e = event(FAILED, 0, labels={"env": "dev"})
    await h.send(e)
    out = (await cli(env, str(e.id), "--json")).stdout
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert {line["automation"] for line in lines} == {"every-failure", "three-failures"}
    for line in lines:
        assert {"automation", "counted", "reason", "fired", "event_id", "triggers"} <= set(line)
    by_name = {line["automation"]: line for line in lines}
    assert by_name["every-failure"]["counted"] and by_name["every-failure"]["fired"]
    assert not by_name["three-failures"]["counted"]
    assert "match.env" in by_name["three-failures"]["reason"]
    text = (await cli(env, str(e.id))).stdout
    assert "near miss" in text and "FAIL" in text and "every-failure" in text
    state = orjson.loads((await cli(env, "three-failures", "--json")).stdout)
    assert state["automation"] == "three-failures" and len(state["near_misses"]) == 1
    assert "last near misses" in (await cli(env, "three-failures")).stdout


async def test_cli_exit_codes(h: Harness, env: dict[str, str]) -> None:
    await setup(h, immediate())
    unknown = await cli(env, "00000000-0000-0000-0000-000000000000", code=EXIT_NOT_FOUND)
    assert "not found" in unknown.stderr
    nope = await cli(env, "nope", code=EXIT_NOT_FOUND)
    assert "no automation named 'nope'" in nope.stderr
    await cli(env, "1-0", code=EXIT_NOT_FOUND)
    away = {**env, "AUTOMATIONS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    await cli(away, "anything", code=EXIT_UNAVAILABLE)
