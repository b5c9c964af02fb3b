"""The console as users run it: ``automations ui`` (or ``serve``) in a subprocess on a free
port, against the session's Redis and the test's prefix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from automations.settings import Settings
from tests.sinks import free_port

ROOT = Path(__file__).resolve().parents[2]
START_S = 20.0


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATIONS_")}
    env.update({
        "AUTOMATIONS_REDIS_URL": str(settings.redis_url), "AUTOMATIONS_PREFIX": settings.prefix,
        "AUTOMATIONS_DATA_DIR": str(settings.data_dir), "AUTOMATIONS_BLOCK_MS": "50",
        "AUTOMATIONS_CLAIM_INTERVAL_S": "0.2", "AUTOMATIONS_LOG_LEVEL": "INFO",
        "AUTOMATIONS_ACTION_RETRY_POLL_S": "0.05", "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


@dataclass
class Running:
    proc: subprocess.Popen[str]
    url: str

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0, **kwargs)  # type: ignore[arg-type]


def start_ui(env: dict[str, str], *args: str) -> Running:
    """``automations ui --port 0 --json``: its one stdout line says where it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "automations", "ui", "--port", "0", "--json",
                             *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"ui did not start: {proc.communicate()[1]}")
    return Running(proc, orjson.loads(line)["url"].rstrip("/"))


def start_serve(env: dict[str, str], port: int, log: Path) -> Running:
    """``automations serve`` (every service, the console on ``port``); its log in ``log``."""
    env = {**env, "AUTOMATIONS_UI_PORT": str(port)}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "automations", "serve"], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/api/automations", timeout=1).status_code == 200:
                return Running(proc, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"serve's console did not answer: {log.read_text()}")


def stop(running: Running) -> None:
    running.proc.terminate()
    try:
        running.proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.communicate()


@pytest.fixture
def ui(settings: Settings) -> Iterator[Running]:
    running = start_ui(settings_env(settings))
    yield running
    stop(running)


@pytest.fixture
def port() -> int:
    return free_port()
