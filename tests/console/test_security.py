"""The console's guards: loopback unless a token, the token on every request, CSRF on every
mutating request (a cross-site POST is refused), and a taken port that stops only the
console inside ``serve``."""

from __future__ import annotations

import logging
import socket

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from automations.cli.app import app
from automations.events import Event
from automations.keys import ENGINE_GROUP, Keys
from automations.service import serve
from automations.settings import Settings
from automations.streams.publish import aemit
from tests.console.conftest import Running, settings_env, start_ui, stop
from tests.wait import acknowledged, wait_until

TOKEN = "t0ken-for-the-console-tests"
RULE = {"name": "guarded", "trigger": {"type": "event", "expect": ["x.y"]},
        "actions": [{"type": "do-nothing"}]}


def enabled(http: httpx.Client) -> bool:
    return bool(http.get("/api/automations/guarded").json()["automation"]["enabled"])


def test_a_cross_site_post_is_refused(ui: Running) -> None:
    with ui.client() as http:
        assert http.post("/api/automations", json=RULE).status_code == 201
        page = http.get("/automations")  # sets the CSRF cookie
        csrf = http.cookies["automations_csrf"]
        assert f'name="csrf" value="{csrf}"' in page.text

        evil = {"Origin": "http://evil.example"}
        forged = http.post("/automations/guarded/pause", data={"csrf": csrf}, headers=evil)
        assert forged.status_code == 403 and "cross-site" in forged.text
        sneaky = http.post("/automations/guarded/pause", data={"csrf": csrf},
                           headers={"Sec-Fetch-Site": "cross-site"})
        assert sneaky.status_code == 403
        api = http.post("/api/automations/guarded/pause", json={}, headers=evil)
        assert api.status_code == 403 and api.json() == {"error": "cross-site request refused"}
        assert http.delete("/api/automations/guarded", headers=evil).status_code == 403
    with httpx.Client(base_url=ui.url) as stranger:  # a form from elsewhere: no cookie
        blind = stranger.post("/automations/guarded/pause", data={"csrf": "guess"})
        assert blind.status_code == 403 and "CSRF" in blind.text
        plain = stranger.post("/api/automations/guarded/pause",
                              content=b"{}", headers={"Content-Type": "text/plain"})
        assert plain.status_code == 403
    with ui.client() as http:
        assert enabled(http)
        http.get("/automations")
        mine = http.post("/automations/guarded/pause?next=/automations",
                         data={"csrf": http.cookies["automations_csrf"]},
                         headers={"Origin": ui.url})
        assert mine.status_code == 303 and mine.headers["location"].startswith("/automations?")
        assert not enabled(http)


def test_a_token_guards_every_request(settings: Settings) -> None:
    running = start_ui(settings_env(settings, AUTOMATIONS_UI_TOKEN=TOKEN))
    try:
        with running.client() as http:
            assert http.get("/api/automations").status_code == 401
            assert http.get("/api/events/live").status_code == 401
            login = http.get("/automations?q=a")
            assert login.status_code == 303
            assert login.headers["location"] == "/login?next=%2Fautomations%3Fq%3Da"
            assert http.get("/static/console.css").status_code == 200
            wrong = {"Authorization": "Bearer nope"}
            assert http.get("/api/automations", headers=wrong).status_code == 401
            right = {"Authorization": f"Bearer {TOKEN}"}
            assert http.get("/api/automations", headers=right).status_code == 200
            created = http.post("/api/automations", json=RULE, headers=right)
            assert created.status_code == 201

            form = http.get("/login")
            csrf = http.cookies["automations_csrf"]
            assert form.status_code == 200
            bad = http.post("/login?next=/events", data={"token": "guess", "csrf": csrf})
            assert bad.status_code == 401 and "not the console" in bad.text
            good = http.post("/login?next=/events", data={"token": TOKEN, "csrf": csrf})
            assert good.status_code == 303 and good.headers["location"] == "/events"
            cookie = good.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
            assert http.get("/automations").status_code == 200
            assert http.get("/api/automations").status_code == 200
            off_site = http.post("/login?next=//evil.example", data={"token": TOKEN,
                                                                     "csrf": csrf})
            assert off_site.headers["location"] == "/"
    finally:
        stop(running)


def test_a_public_address_needs_a_token(settings: Settings,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(settings).items():
        if name.startswith("AUTOMATIONS_"):
            monkeypatch.setenv(name, value)
    refused = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--port", "0"])
    assert refused.exit_code == 2
    assert "not a loopback address, without a token: set AUTOMATIONS_UI_TOKEN" in \
        " ".join(refused.output.split())
    running = start_ui(settings_env(settings, AUTOMATIONS_UI_TOKEN=TOKEN), "--host", "0.0.0.0")
    try:
        with running.client() as http:
            assert http.get("/api/automations").status_code == 401
    finally:
        stop(running)


async def test_serve_keeps_its_services_when_the_console_port_is_taken(
        redis: aioredis.Redis, settings: Settings, keys: Keys,
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = settings.model_copy(update={"ui_port": taken.getsockname()[1]})
        stopping = anyio.Event()
        with caplog.at_level(logging.INFO):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve(busy, ["engine", "console"], stopping=stopping))
                await wait_until(lambda: "web console not started" in caplog.text)
                await aemit(Event(event="e", resource={"prefect.resource.id": "r"}),
                            settings=settings, redis=redis)
                await wait_until(lambda: acknowledged(redis, keys.events, ENGINE_GROUP))
                stopping.set()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "web console" in r.getMessage()]
    assert len(warnings) == 1
    assert "cannot listen on 127.0.0.1" in warnings[0].getMessage()
    assert "other services keep running" in warnings[0].getMessage()
