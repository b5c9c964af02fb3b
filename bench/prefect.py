"""A local Prefect 3 server as the peer: installed in its own virtualenv under ``bench/.cache/``
(Prefect pins ``apprise<2``, which clashes with ours), started on a free loopback port with a
fresh SQLite home, driven over its REST API: automations created with ``POST
/api/automations/``, events sent with ``POST /api/events``, firings read back as
``prefect.automation.triggered`` events from ``/api/events/filter`` and
``/api/events/count-by/resource`` (the server persists events about every 5 s)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from automations.models import Automation
from bench.harness import CACHE_DIR
from bench.redis_server import free_port

PREFECT_VERSION = "3.8.8"
# fastapi 0.165 breaks Prefect 3.8.8's server (`Body() got an unexpected keyword 'min_items'`).
PINS = (f"prefect=={PREFECT_VERSION}", "fastapi==0.145.0")
VENV = CACHE_DIR / "prefect-venv"
HOME = CACHE_DIR / "prefect-home"
TRIGGERED = "prefect.automation.triggered"


def to_prefect(automation: Automation) -> dict[str, Any]:
    """Our automation as Prefect's ``AutomationCreate`` body: the server assigns the id, and
    forbids unknown top-level keys; triggers and actions are already in Prefect's grammar."""
    body = automation.model_dump(mode="json")
    body.pop("id")
    return body


def prefect_binary() -> Path:
    return VENV / "bin" / "prefect"


def installed() -> bool:
    marker = VENV / "bench-installed"
    return prefect_binary().exists() and marker.exists() and marker.read_text() == " ".join(PINS)


async def install(timeout: float = 300.0) -> float:
    """Create the virtualenv and install the pinned Prefect unless already there; seconds."""
    if installed():
        return 0.0
    start = time.perf_counter()
    steps = [[sys.executable, "-m", "venv", "--clear", str(VENV)],
             [str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
              *PINS]]
    for step in steps:
        proc = await asyncio.create_subprocess_exec(
            *step, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"installing Prefect failed: {' / '.join(tail)}")
    (VENV / "bench-installed").write_text(" ".join(PINS))
    return time.perf_counter() - start


class PrefectServer:
    """``prefect server start`` on 127.0.0.1 (a fresh SQLite database in ``HOME/<port>``, so
    servers started at the same time do not share or delete each other's), stopped by
    its process group."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = CACHE_DIR / "prefect-server.log"
        self.home = HOME / str(self.port)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def start(self, timeout: float = 90.0) -> float:
        home = self.home
        shutil.rmtree(home, ignore_errors=True)  # a fresh database each run: no leftovers
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_HOME": str(home),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
               "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
        start = time.perf_counter()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(prefect_binary()), "server", "start", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.perf_counter() - start < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Prefect server exited; see {self.log}")
                try:
                    if (await client.get(f"{self.api}/health")).status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.home, ignore_errors=True)


class PrefectClient:
    """The few REST calls the peer scenario makes."""

    def __init__(self, api: str) -> None:
        self.http = httpx.AsyncClient(base_url=api, timeout=60.0)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def create_automations(self, automations: Iterable[Automation]) -> dict[str, str]:
        """Create each one; returns Prefect's id -> our name."""
        created: dict[str, str] = {}
        for automation in automations:
            reply = await self.http.post("/automations/", json=to_prefect(automation))
            if reply.status_code != 201:
                raise RuntimeError(f"Prefect refused {automation.name}: {reply.text[:300]}")
            created[reply.json()["id"]] = automation.name
        return created

    async def send_events(self, events: list[dict[str, Any]], *, chunk: int = 100) -> None:
        for offset in range(0, len(events), chunk):
            reply = await self.http.post("/events", json=events[offset:offset + chunk])
            reply.raise_for_status()

    def _filter(self, automation_ids: Iterable[str], since: str) -> dict[str, Any]:
        return {
            "event": {"name": [TRIGGERED]},
            "resource": {"id": [f"prefect.automation.{a}" for a in automation_ids]},
            "occurred": {"since": since,
                         "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
        }

    async def triggered_total(self, automation_ids: Iterable[str], since: str) -> int:
        reply = await self.http.post(
            "/events/filter", json={"filter": self._filter(automation_ids, since), "limit": 1})
        reply.raise_for_status()
        return int(reply.json()["total"])

    async def triggered_by_automation(
        self, automation_ids: Iterable[str], since: str
    ) -> dict[str, int]:
        """Prefect automation id -> number of ``prefect.automation.triggered`` events."""
        reply = await self.http.post(
            "/events/count-by/resource",
            json={"filter": self._filter(automation_ids, since), "time_unit": "day"})
        if reply.status_code != 200:
            raise RuntimeError(f"Prefect count-by failed: {reply.text[:300]}")
        return {row["value"].removeprefix("prefect.automation."): int(row["count"])
                for row in reply.json()}
