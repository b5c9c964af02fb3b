"""Logs: JSON lines with ids, and a Redis outage of a real ``serve`` told in a few lines."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from automations.backoff import Backoff, Outage, outage_scope
from automations.events import Event
from automations.keys import Keys
from automations.logging_setup import JsonFormatter, configure_logging
from automations.models import Automation
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import Publisher
from bench.redis_server import RedisServer
from tests.sinks import HttpSink, Response
from tests.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("automations"))
SERVICES = ("engine", "timer", "dispatcher", "scheduler")


def test_a_json_line_has_time_level_logger_message_and_the_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json")
    logger.addHandler(handler)
    try:
        logger.warning("action %s failed", "f1:0", extra={"firing_id": "f1", "attempt": 2})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it broke")
    finally:
        logger.removeHandler(handler)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "WARNING" and first["logger"] == "tests.json"
    assert first["message"] == "action f1:0 failed"
    assert first["firing_id"] == "f1" and first["attempt"] == 2
    assert first["time"].endswith("Z")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc_info"]


def test_configure_logging_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        configure_logging("INFO", "yaml")


def test_an_outage_shared_by_loops_is_one_warning_then_reminders_then_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("tests.outage")
    with caplog.at_level(logging.INFO, logger=log.name), outage_scope("engine", log) as outage:
        outage.remind_first_s = 0.05
        loops = [Backoff(f"loop {i}", logger=log) for i in range(5)]
        assert all(b.outage is outage for b in loops)
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:  # five loops failing over and over for 0.4 s
            for b in loops:
                b.next_delay(ConnectionError("refused"))
            time.sleep(0.005)
        loops[3].recovered()
        for b in loops:
            b.recovered()
    records = [r for r in caplog.records if r.name == log.name]
    down = [r for r in records if "Redis unreachable" in r.message]
    still = [r for r in records if "still unreachable" in r.message]
    up = [r for r in records if "reachable again" in r.message]
    assert len(down) == 1 and down[0].levelno == logging.WARNING
    assert "engine: Redis unreachable (ConnectionError: refused) in loop 0" in down[0].message
    assert 2 <= len(still) <= 4  # 0.05 s, then 0.1 s, 0.2 s: growing intervals
    assert len(up) == 1 and up[0].levelno == logging.INFO
    assert len(records) == len(down) + len(still) + len(up)


def test_a_loop_outside_any_scope_has_its_own_outage() -> None:
    assert Backoff("a").outage is not Backoff("b").outage
    shared = Outage("x")
    assert Backoff("c", outage=shared).outage is shared


class Lines:
    """A process's stderr, read line by line in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._stream = proc.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def join(self) -> None:
        self._thread.join(timeout=10)

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines[start:]]  # every line is JSON

    def count(self, text: str, start: int = 0) -> int:
        return sum(text in r["message"] for r in self.records(start))


@pytest.fixture
def serve_env(own_redis: RedisServer, settings: Settings) -> Iterator[dict[str, str]]:
    yield {**os.environ, "AUTOMATIONS_REDIS_URL": own_redis.url,
           "AUTOMATIONS_PREFIX": settings.prefix, "AUTOMATIONS_LOG_FORMAT": "json",
           "AUTOMATIONS_BLOCK_MS": "100", "AUTOMATIONS_RECONNECT_MAX_S": "0.2",
           "AUTOMATIONS_ACTION_MAX_ATTEMPTS": "1", "AUTOMATIONS_DATA_DIR": str(settings.data_dir)}


async def test_serve_logs_json_with_ids_and_an_outage_in_two_lines_per_service(
    own_redis: RedisServer, settings: Settings, serve_env: dict[str, str], http_sink: HttpSink,
    procs: list[subprocess.Popen[str]],
) -> None:
    keys = Keys.from_settings(settings)
    client = aioredis.Redis.from_url(own_redis.url)
    http_sink.script("/hook", Response(500))  # one attempt allowed: given up at once
    automation = Automation.model_validate({
        "name": "disk-full", "trigger": {"posture": "Reactive", "expect": ["disk.full"]},
        "actions": [{"type": "call-webhook", "url": http_sink.url("/hook")}]})
    await AutomationStore(client, keys).apply([automation])
    proc = subprocess.Popen([EXE, "serve"], cwd=ROOT, env=serve_env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(proc)
    out = Lines(proc)
    try:
        await wait_until(lambda: out.count("serving engine"), timeout=20)
        event = Event(event="disk.full", resource={"prefect.resource.id": "host-1"})
        await Publisher(client, settings).publish([event])
        await wait_until(lambda: out.count("given up"), timeout=20)
        [fired] = [r for r in out.records() if "fired" in r["message"]]
        assert fired["level"] == "INFO" and fired["automation"] == "disk-full"
        assert fired["automation_id"] == str(automation.id)
        assert fired["event_id"] == str(event.id) and fired["firing_id"]
        [gave_up] = [r for r in out.records() if "given up" in r["message"]]
        assert gave_up["level"] == "ERROR"
        assert gave_up["firing_id"] == fired["firing_id"] and gave_up["event_id"] == str(event.id)
        assert gave_up["action"] == "call-webhook" and gave_up["automation_id"]

        await client.config_set("save", "3600 1")  # the restarted server has the same data
        start = len(out.lines)
        await anyio.to_thread.run_sync(own_redis.stop)
        await anyio.sleep(3)  # the outage under test: three seconds of retries every 0.2 s
        await anyio.to_thread.run_sync(own_redis.start)
        await wait_until(lambda: out.count("reachable again", start) >= len(SERVICES),
                         timeout=20)
        await anyio.sleep(1)  # nothing more should follow
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        out.join()
    finally:
        await client.aclose()
    during = out.records(start)
    down = [r for r in during if "Redis unreachable" in r["message"]]
    up = [r for r in during if "reachable again" in r["message"]]
    assert sorted(r["message"].partition(":")[0] for r in down) == sorted(SERVICES), down
    assert sorted(r["message"].partition(":")[0] for r in up) == sorted(SERVICES), up
    assert all(r["level"] == "WARNING" for r in down) and all(r["level"] == "INFO" for r in up)
    noisy = [r for r in during if r["level"] in ("WARNING", "ERROR") and r not in down]
    assert not noisy, noisy
