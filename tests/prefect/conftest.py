"""A real Prefect 3.8.8 server for the session (bench/prefect.py installs it in its own cached
virtualenv), and helpers that drive it through its REST API and its own ``@flow`` runtime."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.prefect import VENV, PrefectServer, install


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The API URL of a Prefect server on a loopback port; skipped (with the reason printed)
    only when it cannot be installed outside CI."""
    try:
        asyncio.run(install(600))
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        reason = f"Prefect {VENV} cannot be installed here: {exc}"
        print(reason)
        pytest.skip(reason)
    server = PrefectServer()
    asyncio.run(server.start())
    yield server.api
    server.stop()


def run_flow(api: str, source: str, tmp_path: Path, *, timeout: float = 120) -> str:
    """Run ``source`` (a script using ``prefect``) with the Prefect venv's python against
    ``api``; its combined output."""
    script = tmp_path / "prefect_flow.py"
    script.write_text(source)
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run([str(VENV / "bin" / "python"), str(script)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout + done.stderr


async def rest(api: str, method: str, path: str, json: Any = None) -> Any:
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for _ in range(20):  # SQLite busy: Prefect answers 503 "database is locked"
            reply = await client.request(method, path, json=json)
            if reply.status_code != 503:
                break
            await asyncio.sleep(0.5)
        reply.raise_for_status()
        return reply.json() if reply.content else None


async def make_deployment(api: str, flow: str, name: str) -> str:
    """A deployment (no worker needed: runs stay Scheduled); its id."""
    flow_id = (await rest(api, "POST", "/flows/", {"name": flow}))["id"]
    created = await rest(api, "POST", "/deployments/", {"name": name, "flow_id": flow_id})
    return str(created["id"])


async def flow_runs_of(api: str, deployment_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
    runs: list[dict[str, Any]] = await rest(api, "POST", "/flow_runs/filter", body)
    return runs
