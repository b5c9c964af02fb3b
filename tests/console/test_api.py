"""The JSON API against a real ``automations ui`` and Redis: automations created and updated
with ``apply``'s own validation and errors, paging, events, explain, dead letters, runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from automations.events import Event
from automations.keys import Keys
from automations.runtime.deployments import Deployment, DeploymentStore, IntervalSchedule
from automations.settings import Settings
from automations.streams.publish import aemit
from tests.console.conftest import ROOT, Running, settings_env

JSON = {"content-type": "application/json"}


def automation(name: str, *, threshold: int = 1, url: str = "http://127.0.0.1:9/hook",
               expect: str = "disk.full") -> dict[str, Any]:
    return {"name": name, "trigger": {"type": "event", "expect": [expect],
                                      "threshold": threshold, "within": 60},
            "actions": [{"type": "call-webhook", "url": url}]}


BAD = [{"name": "bad", "trigger": {"type": "event", "expect": ["x"], "threshold": 0},
        "actions": [{"type": "call-webhook", "url": "ftp://nowhere"}, {"type": "nope"}]},
       {"name": "worse", "trigger": {"type": "event", "expect": ["x"], "within": "soon"},
        "actions": [{"type": "send-notification", "block": "no-such-block", "body": "{{ x"}]}]


def test_create_update_and_refusals_use_applys_validation(ui: Running, settings: Settings,
                                                          tmp_path: Path) -> None:
    with ui.client() as http:
        created = http.post("/api/automations", json=automation("disk"))
        assert created.status_code == 201, created.text
        assert created.json()["created"] == ["disk"]
        again = http.put("/api/automations/disk", json=automation("disk", threshold=3))
        assert again.status_code == 200 and again.json()["updated"] == ["disk"]
        assert again.json()["trigger_reset"] == ["disk"]
        assert http.get("/api/automations/disk").json()["automation"]["trigger"] == \
            "3x disk.full in 1m"

        refused = http.post("/api/automations", json=BAD)
        assert refused.status_code == 422
        api_errors = [(e["automation"], e["path"], e["message"])
                      for e in refused.json()["errors"]]
        wrong_name = http.put("/api/automations/disk", json=automation("other"))
        assert wrong_name.status_code == 422 and wrong_name.json()["errors"][0]["path"] == "name"
        assert http.get("/api/automations", params={"q": "bad"}).json()["total"] == 0

    source = tmp_path / "bad.json"
    source.write_bytes(orjson.dumps(BAD))
    cli = subprocess.run([sys.executable, "-m", "automations", "apply", str(source), "--json"],
                         env=settings_env(settings), cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert cli.returncode == 2
    cli_errors = [(e["automation"], e["path"], e["message"])
                  for e in orjson.loads(cli.stdout)["errors"]]
    assert api_errors == cli_errors  # the same field paths and messages, in the same order
    assert len(api_errors) >= 5


def test_paging_filter_pause_resume_and_delete(ui: Running) -> None:
    with ui.client() as http:
        batch = [automation(f"auto-{i:03d}") for i in range(120)]
        assert http.post("/api/automations", json={"automations": batch}).status_code == 201
        first = http.get("/api/automations", params={"limit": 50}).json()
        assert first["total"] == 120 and len(first["items"]) == 50
        assert first["items"][0]["name"] == "auto-000"
        last = http.get("/api/automations", params={"offset": 100, "limit": 50}).json()
        assert [a["name"] for a in last["items"]][-1] == "auto-119" and len(last["items"]) == 20
        assert http.get("/api/automations", params={"q": "-11"}).json()["total"] == 10

        paused = http.post("/api/automations/auto-007/pause", headers=JSON)
        assert paused.json()["enabled"] is False and paused.json()["changed"] is True
        assert http.get("/api/automations/auto-007").json()["automation"]["enabled"] is False
        resumed = http.post("/api/automations/auto-007/resume", headers=JSON).json()
        assert resumed["enabled"] is True
        assert http.delete("/api/automations/auto-007").json()["deleted"] is True
        assert http.get("/api/automations/auto-007").status_code == 404
        assert http.get("/api/automations", params={"limit": 0}).status_code == 400
        assert http.get("/api/automations", params={"limit": "x"}).status_code == 400


async def test_events_filter_explain_and_escaping(ui: Running, redis: aioredis.Redis,
                                                  settings: Settings) -> None:
    import httpx
    async with httpx.AsyncClient(base_url=ui.url, timeout=10) as http:
        await http.post("/api/automations", json=automation("disk"))
        hostile = Event(event="disk.full", resource={"prefect.resource.id": "host.db1"},
                        payload={"note": "<script>alert('x')</script>"})
        other = Event(event="cpu.high", resource={"prefect.resource.id": "host.web"})
        await aemit(hostile, settings=settings, redis=redis)
        await aemit(other, settings=settings, redis=redis)

        everything = (await http.get("/api/events")).json()
        assert [e["event"] for e in everything["items"]] == ["cpu.high", "disk.full"]
        by_name = (await http.get("/api/events", params={"name": "disk.*"})).json()
        assert [e["id"] for e in by_name["items"]] == [str(hostile.id)]
        by_label = (await http.get("/api/events", params={
            "label": "prefect.resource.id=host.w*"})).json()
        assert [e["id"] for e in by_label["items"]] == [str(other.id)]
        assert (await http.get("/api/events", params={"label": "nokey"})).status_code == 400
        older = (await http.get("/api/events", params={"limit": 1})).json()
        assert older["next"] == everything["items"][0]["entry_id"]
        rest = (await http.get("/api/events", params={"limit": 1, "before": older["next"]})
                ).json()
        assert [e["id"] for e in rest["items"]] == [str(hostile.id)]

        explained = (await http.get(f"/api/events/{hostile.id}")).json()["explanation"]
        assert [v["automation"] for v in explained["automations"]] == ["disk"]
        assert explained["automations"][0]["counted"] is True
        assert (await http.get("/api/events/0-1")).status_code == 404

        page = (await http.get("/events")).text
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
        detail = (await http.get(f"/events/{hostile.id}")).text
        assert "<script>alert" not in detail and "&lt;script&gt;" in detail


async def test_live_feed_streams_new_events(ui: Running, redis: aioredis.Redis,
                                            settings: Settings) -> None:
    import httpx
    async with httpx.AsyncClient(base_url=ui.url, timeout=10) as http, \
            http.stream("GET", "/api/events/live", params={"name": "feed.*"}) as feed:
        assert feed.headers["content-type"].startswith("text/event-stream")
        lines = feed.aiter_lines()
        while (await anext(lines)) != ": connected":
            pass
        await aemit(Event(event="skip.me", resource={"prefect.resource.id": "a"}),
                    settings=settings, redis=redis)
        wanted = Event(event="feed.one", resource={"prefect.resource.id": "a"},
                       payload={"html": "<script>x()</script>"})
        await aemit(wanted, settings=settings, redis=redis)
        with anyio.fail_after(5):
            async for line in lines:
                if line.startswith("data: "):
                    break
        data = orjson.loads(line.removeprefix("data: "))
        assert data["id"] == str(wanted.id) and data["payload"] == {"html": "<script>x()</script>"}


async def test_dead_letters_list_show_retry_purge(ui: Running, redis: aioredis.Redis,
                                                  keys: Keys) -> None:
    import httpx
    dead = keys.dead("events")
    ids = [(await redis.xadd(dead, {"data": orjson.dumps({"n": i}), "reason": "rejected",
                                     "source_stream": keys.events, "source_id": f"1-{i}",
                                     "deliveries": "5", "group": "engine",
                                     "consumer": "c"})).decode()  # type: ignore[union-attr]
           for i in range(3)]
    async with httpx.AsyncClient(base_url=ui.url, timeout=10) as http:
        listed = (await http.get("/api/dead-letters")).json()
        assert listed["streams"] == {"events": 3}
        assert [d["id"] for d in listed["items"]] == ids[::-1]
        shown = (await http.get(f"/api/dead-letters/events/{ids[0]}")).json()
        assert shown["payload"] == {"n": 0} and shown["reason"] == "rejected"
        retried = (await http.post(f"/api/dead-letters/events/{ids[0]}/retry",
                                   headers=JSON)).json()
        assert retried["retried"] is True and keys.events in retried["outcome"]
        assert await redis.xlen(keys.events) == 1
        assert (await http.post(f"/api/dead-letters/events/{ids[0]}/retry",
                                headers=JSON)).status_code == 404
        purged = await http.delete(f"/api/dead-letters/events/{ids[1]}")
        assert purged.json()["purged"] == 1
        everything = await http.post("/api/dead-letters/events/purge", headers=JSON)
        assert everything.json()["purged"] == 1
        assert (await http.get("/api/dead-letters")).json()["items"] == []


async def test_deployments_run_now_pause_and_the_run_timeline(
        ui: Running, redis: aioredis.Redis, keys: Keys) -> None:
    import httpx
    [(_, dep)] = await DeploymentStore(redis, keys).apply([Deployment(
        name="nightly", entrypoint="tests/runtime/flowdefs.py:adder",
        schedules=[IntervalSchedule(interval=3600)])])
    async with httpx.AsyncClient(base_url=ui.url, timeout=10) as http:
        listed = (await http.get("/api/deployments")).json()["items"]
        assert [d["name"] for d in listed] == ["nightly"] and listed[0]["paused"] is False
        run = await http.post("/api/deployments/nightly/run", json={"parameters": {"a": 1}})
        assert run.status_code == 201, run.text
        run_id = run.json()["id"]
        detail = (await http.get(f"/api/flow-runs/{run_id}")).json()
        assert [s["type"] for s in detail["timeline"]] == ["SCHEDULED"]
        assert (await http.get("/api/flow-runs")).json()["total"] == 1
        paused = (await http.post("/api/deployments/nightly/pause", headers=JSON)).json()
        assert paused["paused"] is True and paused["changed"] is True
        assert (await http.get(f"/api/deployments/{dep.id}")).json()["deployment"]["paused"]
        assert (await http.get("/api/deployments/none")).status_code == 404


@pytest.mark.parametrize("path", ["/automations", "/events", "/dead-letters", "/deployments",
                                  "/flow-runs"])
def test_every_page_renders(ui: Running, path: str) -> None:
    with ui.client() as http:
        page = http.get(path)
        assert page.status_code == 200 and "<!doctype html>" in page.text
        assert float(page.headers["server-timing"].partition("dur=")[2]) > 0
