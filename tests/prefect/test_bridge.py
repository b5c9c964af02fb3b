"""The Prefect event bridge against a real Prefect 3.8.8 server: a failing ``@flow`` fires our
automation, our automation events go back to Prefect (and their echo is dropped), and a
bridge killed and restarted during a burst loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import redis.asyncio as aioredis

from automations.keys import Keys
from automations.models import Automation
from automations.prefect.bridge import ORIGIN_LABEL, Bridge
from automations.prefect.client import PrefectClient
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from bench.redis_server import free_port
from tests.prefect.conftest import flow_runs_of, make_deployment, rest, run_flow
from tests.wait import wait_until

EXE = str(Path(sys.executable).with_name("automations"))

FAILING_FLOW = '''
from prefect import flow, task

@task
def add(a, b):
    return a + b

@flow(name="bridge-fails")
def fails():
    add(1, 2)
    raise ValueError("boom")

if __name__ == "__main__":
    try:
        fails()
    except ValueError:
        print("flow failed as intended")
'''


def bridged(settings: Settings, api: str) -> Settings:
    return settings.model_copy(update={
        "prefect_api_url": api, "prefect_bridge_reconcile_s": 1.0,
        "prefect_bridge_settle_s": 6.0, "prefect_bridge_startup_overlap_s": 120.0,
        "prefect_bridge_overlap_s": 60.0})


async def stream_events(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    entries: Any = await redis.xrange(keys.events)
    return [orjson.loads(fields[b"data"]) for _, fields in entries]


async def prefect_events(api: str, resource_id: str, name: str) -> list[dict[str, Any]]:
    body = {"filter": {"any_resource": {"id": [resource_id]}, "event": {"name": [name]},
                       "occurred": {"since": "2020-01-01T00:00:00Z",
                                    "until": "2100-01-01T00:00:00Z"}}, "limit": 50}
    found: list[dict[str, Any]] = (await rest(api, "POST", "/events/filter", body))["events"]
    return found


async def test_a_failing_prefect_flow_fires_our_automation_and_we_write_back(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys, tmp_path: Path,
) -> None:
    deployment_id = await make_deployment(prefect_api, "bridge-target", "on-failure")
    automation = Automation.model_validate({
        "name": "prefect-flow-failed",
        "trigger": {"type": "event", "posture": "Reactive", "expect": ["prefect.flow-run.Failed"],
                    "match": {"prefect.resource.id": "prefect.flow-run.*"}, "threshold": 1,
                    "within": 0},
        "actions": [{"type": "run-deployment", "deployment_id": deployment_id,
                     "parameters": {"failed": "{{ event.resource.id }}"}}]})
    await AutomationStore(redis, keys).apply([automation])
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(bridged(settings, prefect_api),
                                    ["engine", "dispatcher", "bridge"], stopping=stopping))
        output = await anyio.to_thread.run_sync(run_flow, prefect_api, FAILING_FLOW, tmp_path)
        assert "flow failed as intended" in output, output

        async def fired() -> dict[str, Any] | None:
            for event in await stream_events(redis, keys):
                if (event["event"] == "prefect.automation.triggered"
                        and event["resource"]["prefect.resource.id"]
                        == f"prefect.automation.{automation.id}"):
                    return event
            return None

        triggered = await wait_until(fired, timeout=60, what="our automation fired")
        failed = triggered["payload"]["triggering_event"]
        assert failed["event"] == "prefect.flow-run.Failed"
        assert failed["resource"]["prefect.resource.id"].startswith("prefect.flow-run.")

        async def written_back() -> list[dict[str, Any]]:
            return await prefect_events(prefect_api, f"prefect.automation.{automation.id}",
                                        "prefect.automation.action.executed")

        executed = (await wait_until(written_back, timeout=60, what="written back"))[0]
        assert executed["resource"][ORIGIN_LABEL] == settings.prefix
        echoed = await prefect_events(prefect_api, f"prefect.automation.{automation.id}",
                                      "prefect.automation.triggered")
        assert [e["id"] for e in echoed] == [triggered["id"]]
        runs = await flow_runs_of(prefect_api, deployment_id)
        assert len(runs) == 1  # run-deployment created a run of the Prefect deployment
        assert runs[0]["created_by"]["type"] == "AUTOMATION"
        assert runs[0]["created_by"]["id"] == str(automation.id)
        assert runs[0]["parameters"] == {"failed": failed["resource"]["prefect.resource.id"]}
        assert str(runs[0]["idempotency_key"]).endswith(":0")  # ours: <firing id>:<action>
        await anyio.sleep(3)  # the echo came back through the websocket by now
        stopping.set()
    ids = [e["id"] for e in await stream_events(redis, keys)]
    assert ids.count(triggered["id"]) == 1
    assert ids.count(failed["id"]) == 1


async def test_events_we_wrote_back_are_dropped(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
) -> None:
    now = datetime.now(UTC).isoformat()
    ours = {"id": str(uuid.uuid4()), "occurred": now, "event": "prefect.automation.triggered",
            "resource": {"prefect.resource.id": "prefect.automation.x",
                         ORIGIN_LABEL: settings.prefix}}
    theirs = {"id": str(uuid.uuid4()), "occurred": now, "event": "ext.thing",
              "resource": {"prefect.resource.id": "ext.1"}}
    async with PrefectClient(prefect_api) as client:
        bridge = Bridge(redis, bridged(settings, prefect_api), client, keys=keys)
        assert await bridge.accept([ours, theirs, theirs], "live") == 1
        assert await bridge.accept([theirs], "reconcile") == 0
    assert [e["id"] for e in await stream_events(redis, keys)] == [theirs["id"]]
    counts = bridge.metrics.exposition().decode()
    assert 'automations_prefect_bridge_events_total{outcome="echo",path="live"} 1.0' in counts
    assert 'outcome="duplicate",path="reconcile"} 1.0' in counts


def start_bridge(api: str, settings: Settings, metrics_port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "AUTOMATIONS_REDIS_URL": str(settings.redis_url),
           "AUTOMATIONS_PREFIX": settings.prefix, "AUTOMATIONS_PREFECT_BRIDGE_RECONCILE_S": "1",
           "AUTOMATIONS_PREFECT_BRIDGE_SETTLE_S": "6",
           "AUTOMATIONS_PREFECT_BRIDGE_STARTUP_OVERLAP_S": "300",
           "AUTOMATIONS_METRICS_PORT": str(metrics_port)}
    return subprocess.Popen([EXE, "bridge", "prefect", "--api-url", api], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_a_bridge_killed_during_a_burst_loses_and_duplicates_nothing(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
    procs: list[subprocess.Popen[str]],
) -> None:
    name = f"burst.{uuid.uuid4().hex[:8]}"
    sent: list[str] = []
    port = free_port()

    async def burst(count: int) -> None:
        events = [{"id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(),
                   "event": name, "resource": {"prefect.resource.id": f"{name}.{i}"},
                   "payload": {"pad": "x" * 500}} for i in range(count)]
        for start in range(0, count, 100):
            await rest(prefect_api, "POST", "/events", events[start:start + 100])
        sent.extend(e["id"] for e in events)

    async def received() -> list[str]:
        return [e["id"] for e in await stream_events(redis, keys) if e["event"] == name]

    bridge = start_bridge(prefect_api, settings, port)
    procs.append(bridge)

    async def scraped() -> str | None:
        try:
            async with httpx.AsyncClient() as client:
                body = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.TransportError:
            return None
        return body if "automations_prefect_bridge_connected 1.0" in body else None

    await wait_until(scraped, timeout=30, what="the bridge subscribed")
    await burst(300)
    await wait_until(received, timeout=30, what="the burst arriving")  # then kill it mid-way
    os.kill(bridge.pid, signal.SIGKILL)
    bridge.wait(10)
    await burst(300)  # while the bridge is down
    restarted = start_bridge(prefect_api, settings, port)
    procs.append(restarted)
    await burst(300)  # after the restart, more than its 256-event websocket queue at once

    async def all_in() -> bool:
        return set(await received()) >= set(sent)

    await wait_until(all_in, timeout=90, poll=0.5, what="every burst event bridged")
    metrics = await wait_until(scraped, timeout=10, what="metrics")
    passes_before = _metric(metrics, 'automations_prefect_bridge_reconciles_total'
                                     '{outcome="completed"}')

    async def two_more_passes() -> bool:
        body = await scraped() or ""
        return _metric(body, 'automations_prefect_bridge_reconciles_total'
                             '{outcome="completed"}') >= passes_before + 2

    started = time.monotonic()
    await wait_until(two_more_passes, timeout=60, poll=0.5, what="two more passes")
    print(f"two reconciliation passes took {time.monotonic() - started:.1f} s")
    ids = await received()
    assert len(ids) == len(set(ids)) == len(sent) == 900
    body = await scraped() or ""
    assert "automations_prefect_bridge_lag_seconds" in body
    assert 'automations_prefect_bridge_events_total{outcome="published",path="reconcile"}' in body
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(30) == 0


def _metric(body: str, name: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
