"""The console in a real browser: Playwright driving Debian's headless Chromium against
``automations serve`` (engine, dispatcher, timer, scheduler and console) on a real Redis, with
webhooks delivered to the real HTTP sink.

Chromium comes from the system (``apt-get install chromium``); without ``/usr/bin/chromium``
these tests skip, saying so, except in CI (``CI`` set), where they fail. With
``UPDATE_SCREENSHOTS=1`` the screenshots they take are copied into ``docs/ui/``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from automations.events import Event
from automations.keys import DISPATCH_GROUP, ENGINE_GROUP, Keys
from automations.settings import Settings
from automations.streams.publish import emit
from tests.console.conftest import ROOT, Running, settings_env, start_serve, stop
from tests.sinks import HttpSink, Response, free_port

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "docs" / "ui"

if not CHROMIUM.exists() or not shutil.which("chromium"):
    reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if os.environ.get("CI"):
        raise RuntimeError(f"browser tests must run in CI: {reason}")
    print(f"skipping the browser tests: {reason}")
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def sink() -> Iterator[HttpSink]:
    server = HttpSink()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Running, Settings]]:
    base = tmp_path_factory.mktemp("console")
    settings = Settings(redis_url=redis_url, prefix=f"ui-{uuid.uuid4().hex[:8]}",
                        data_dir=base / "data", block_ms=50)
    # a short lease: a re-driven action waits out the lease its dead attempt left (noted)
    env = settings_env(settings, AUTOMATIONS_ACTION_MAX_ATTEMPTS="1",
                       AUTOMATIONS_CLAIM_IDLE_MS="1500", AUTOMATIONS_ACTION_TIMEOUT_S="5")
    running = start_serve(env, free_port(), base / "serve.log")
    yield running, settings
    stop(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, stack: tuple[Running, Settings]) -> Iterator[Page]:
    context = browser.new_context(base_url=stack[0].url, viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    yield opened
    context.close()


def shot(page: Page, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)


def api(page: Page, method: str, path: str, body: Any = None) -> Any:
    answer = page.request.fetch(path, method=method, data=orjson.dumps(body).decode()
                                if body is not None else None,
                                headers={"Content-Type": "application/json"})
    assert answer.ok, answer.text()
    return answer.json()


def webhook_rule(name: str, expect_event: str, target: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "description": f"posts to the sink on {expect_event}",
            "trigger": {"type": "event", "expect": [expect_event],
                        "match": {"prefect.resource.id": "host.*"}},
            "actions": [{"type": "call-webhook", **target,
                         "payload": '{"host": "{{ event.resource.id }}"}'}]}


def send(settings: Settings, name: str, **payload: Any) -> Event:
    [event] = [Event(event=name, resource={"prefect.resource.id": "host.db1"},
                     payload=payload)]
    emit(event, settings=settings)
    return event


def settled(settings: Settings, timeout: float = 10.0) -> None:
    """The engine and the dispatcher have handled everything there is."""
    keys = Keys.from_settings(settings)
    client = redis.Redis.from_url(str(settings.redis_url))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if all(_acked(client, stream, group) for stream, group in
                   ((keys.events, ENGINE_GROUP), (keys.partition(0).firings, DISPATCH_GROUP))):
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError("the engine and dispatcher did not settle")


def _acked(client: redis.Redis, stream: str, group: str) -> bool:
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    last: Any = client.xrevrange(stream, count=1)
    return any(g["name"] == group.encode() and g["pending"] == 0
               and (not last or g["last-delivered-id"] == last[0][0]) for g in groups)


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return found


def test_the_automations_page_lists_and_pauses(page: Page, stack: tuple[Running, Settings],
                                               sink: HttpSink, tmp_path: Path) -> None:
    _, settings = stack
    page.goto("/automations")
    expect(page.locator("h1")).to_contain_text("Automations")
    for name, event in (("pausable", "ui.pause"), ("control", "ui.pause")):
        api(page, "POST", "/api/automations",
            webhook_rule(name, event, {"url": sink.url(f"/{name}")}))
    api(page, "POST", "/api/automations", {"automations": [
        webhook_rule(f"disk-{i}", "disk.full", {"url": sink.url("/disk")}) for i in range(6)]})
    send(settings, "ui.pause")
    wait_for(lambda: sink.received("/pausable") and sink.received("/control"))

    page.goto("/automations")
    row = page.locator("#automations tbody tr", has_text="pausable")
    expect(row).to_contain_text("enabled")
    expect(row.locator("td").nth(4)).to_have_text("1")
    shot(page, "automations", tmp_path)
    row.get_by_role("button", name="Pause").click()
    expect(page.locator(".done")).to_have_text("paused pausable")
    expect(page.locator("#automations tbody tr", has_text="pausable")).to_contain_text("paused")

    send(settings, "ui.pause")  # the engine no longer fires the paused one
    wait_for(lambda: len(sink.received("/control")) == 2)
    settled(settings)
    assert len(sink.received("/pausable")) == 1
    page.locator("#automations tbody tr", has_text="pausable").get_by_role(
        "button", name="Resume").click()
    expect(page.locator(".done")).to_have_text("resumed pausable")


def test_an_event_appears_in_the_live_feed_within_a_second(
        page: Page, stack: tuple[Running, Settings], tmp_path: Path) -> None:
    _, settings = stack
    page.goto("/events")
    expect(page.locator("#live-status")).to_have_text("● live")
    name = f"ui.live.{uuid.uuid4().hex[:6]}"
    hostile = "<script>window.__pwned = 1</script><img src=x onerror=window.__pwned=2>"
    started = time.monotonic()
    event = send(settings, name, note=hostile)
    row = page.locator("#events tbody tr", has_text=name)
    expect(row).to_be_visible(timeout=1000)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    expect(row.locator("td.payload")).to_contain_text(hostile)  # shown as text
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#events script, #events img").count() == 0
    shot(page, "events", tmp_path)

    page.goto("/events")  # the server-rendered page escapes it too
    expect(page.locator("#events tbody tr", has_text=name).first).to_contain_text(hostile)
    assert page.evaluate("window.__pwned") is None
    page.get_by_role("link", name=name).first.click()
    expect(page.locator("#payload")).to_contain_text("<script>window.__pwned")
    expect(page.locator("dl.facts")).to_contain_text(str(event.id))
    assert page.evaluate("window.__pwned") is None


def test_a_firing_and_its_webhook_outcome(page: Page, stack: tuple[Running, Settings],
                                          sink: HttpSink, tmp_path: Path) -> None:
    _, settings = stack
    secret_path = "s3cr3t-path-" + uuid.uuid4().hex
    client = redis.Redis.from_url(str(settings.redis_url))
    client.hset(Keys.from_settings(settings).blocks, "hook-url", sink.url(f"/hooked/{secret_path}"))
    client.close()
    api(page, "POST", "/api/automations", webhook_rule("hooked", "ui.hook", {"block": "hook-url"}))
    send(settings, "ui.hook", size=3)
    wait_for(lambda: sink.received(f"/hooked/{secret_path}"))
    settled(settings)

    page.goto("/automations/hooked")
    firings = page.locator("#firings")
    expect(firings).to_contain_text("executed", timeout=5000)
    expect(firings).to_contain_text("call-webhook")
    expect(page.locator("#definition pre")).to_contain_text("block: hook-url")
    shot(page, "automation", tmp_path)
    assert secret_path not in page.content()
    firings.locator("a").first.click()
    expect(page.locator("#verdicts")).to_contain_text("hooked")
    expect(page.locator("#verdicts")).to_contain_text("fired")
    shot(page, "event", tmp_path)
    assert secret_path not in page.content()
    assert secret_path not in page.request.get("/api/automations/hooked").text()


def test_retry_a_dead_letter(page: Page, stack: tuple[Running, Settings], sink: HttpSink,
                             tmp_path: Path) -> None:
    _, settings = stack
    sink.script("/flaky", Response(503))
    api(page, "POST", "/api/automations",
        webhook_rule("flaky", "ui.flaky", {"url": sink.url("/flaky")}))
    send(settings, "ui.flaky")
    wait_for(lambda: api(page, "GET", "/api/dead-letters?stream=firings")["items"])
    sink.script("/flaky", Response(200))

    page.goto("/dead-letters")
    row = page.locator("#dead-letters tbody tr", has_text="call-webhook")
    expect(row).to_have_count(1)
    shot(page, "dead_letters", tmp_path)
    row.get_by_role("button", name="Retry").click()
    expect(page.locator(".done")).to_contain_text("scheduled now as attempt 2")
    wait_for(lambda: len(sink.received("/flaky")) == 2, timeout=15)
    assert sink.received("/flaky")[-1].json() == {"host": "host.db1"}
    page.goto("/automations/flaky")
    expect(page.locator("#firings")).to_contain_text("executed", timeout=5000)
    page.goto("/dead-letters")
    expect(page.locator("#dead-letters tbody")).to_contain_text("no dead letters")


def test_deployments_run_now_and_the_run_timeline(page: Page, stack: tuple[Running, Settings],
                                                  tmp_path: Path) -> None:
    import anyio

    from automations.connection import connect
    from automations.runtime.deployments import Deployment, DeploymentStore, IntervalSchedule
    _, settings = stack

    async def deploy() -> None:
        client = connect(settings)
        await DeploymentStore(client, Keys.from_settings(settings)).apply([Deployment(
            name="nightly-report", entrypoint="tests/runtime/flowdefs.py:adder",
            schedules=[IntervalSchedule(interval=86_400)])])
        await client.aclose()

    with ThreadPoolExecutor(1) as pool:  # Playwright's loop owns this thread
        pool.submit(anyio.run, deploy).result()
    page.goto("/deployments")
    row = page.locator("#deployments tbody tr", has_text="nightly-report")
    row.get_by_role("button", name="Pause schedules").click()
    expect(page.locator(".done")).to_have_text("paused nightly-report")
    shot(page, "deployments", tmp_path)
    page.locator("#deployments tbody tr", has_text="nightly-report").get_by_role(
        "button", name="Resume schedules").click()
    expect(page.locator(".done")).to_have_text("resumed nightly-report")
    page.goto("/deployments/nightly-report")
    page.locator("textarea[name=parameters]").fill('{"a": 2}')
    page.get_by_role("button", name="Run now").click()
    expect(page.locator(".done")).to_contain_text("created flow run")
    expect(page.locator("#timeline")).to_contain_text("Scheduled")
    shot(page, "flow_run", tmp_path)
