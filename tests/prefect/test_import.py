"""``automations import prefect`` against a real Prefect 3.8.8 server: three automations made
through Prefect's API are copied (idempotently), taken over, and fire once: ours, not
Prefect's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from typer.testing import CliRunner

from automations.cli.app import app
from automations.keys import Keys
from automations.prefect.bridge import ORIGIN_LABEL
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from tests.prefect.conftest import rest
from tests.prefect.test_bridge import bridged, prefect_events
from tests.wait import wait_until


def run_import(api: str, settings: Settings, *args: str) -> dict[str, Any]:
    env = {"AUTOMATIONS_REDIS_URL": str(settings.redis_url), "AUTOMATIONS_PREFIX": settings.prefix}
    result = CliRunner().invoke(app, ["import", "prefect", "--api-url", api, "--json", *args],
                                env=env)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


async def test_import_three_automations_take_over_and_fire_once(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = []
    for n in range(3):
        created = await rest(prefect_api, "POST", "/automations/", {
            "name": f"imported-{tag}-{n}", "description": "", "enabled": True, "tags": [],
            "trigger": {"type": "event", "posture": "Reactive", "expect": [f"imp.{tag}.{n}"],
                        "threshold": 1, "within": 0},
            "actions": [{"type": "do-nothing"}], "actions_on_trigger": [],
            "actions_on_resolve": []})
        ids.append(created["id"])
    first = await anyio.to_thread.run_sync(run_import, prefect_api, settings, "--take-over")
    mine = [label for label in first["created"] if tag in label]
    assert len(mine) == 3 and len([x for x in first["taken_over"] if tag in x]) == 3
    for automation_id in ids:
        there = await rest(prefect_api, "GET", f"/automations/{automation_id}")
        assert there["enabled"] is False
    # Prefect's copies now say enabled: false: the echo of our take-over
    again = await anyio.to_thread.run_sync(run_import, prefect_api, settings)
    assert len([x for x in again["unchanged"] if tag in x]) == 3, again
    store = AutomationStore(redis, keys)
    for automation_id in ids:
        ours = await store.get(automation_id)
        assert ours is not None and ours.enabled  # the echo did not disable ours

    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(bridged(settings, prefect_api),
                                    ["engine", "dispatcher", "bridge"], stopping=stopping))
        await anyio.sleep(2)  # the bridge subscribes
        await rest(prefect_api, "POST", "/events", [{
            "id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(),
            "event": f"imp.{tag}.0", "resource": {"prefect.resource.id": f"imp.{tag}"}}])

        async def ours_in_prefect() -> list[dict[str, Any]]:
            return await prefect_events(prefect_api, f"prefect.automation.{ids[0]}",
                                        "prefect.automation.triggered")

        fired = await wait_until(ours_in_prefect, timeout=60, what="our firing in Prefect")
        stopping.set()
    assert len(fired) == 1 and fired[0]["resource"][ORIGIN_LABEL] == settings.prefix
    entries: Any = await redis.xrange(keys.events)
    triggered = [e for e in (orjson.loads(f[b"data"]) for _, f in entries)
                 if e["event"] == "prefect.automation.triggered"
                 and e["resource"]["prefect.resource.id"].removeprefix("prefect.automation.")
                 in ids]
    assert [e["resource"]["prefect.resource.id"] for e in triggered] == [
        f"prefect.automation.{ids[0]}"]
