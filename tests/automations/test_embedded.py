"""The embedded default Redis: when it starts, that it works and stops, stale-run cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from automations.connection import EMBEDDED_STATE, embedded_url, redis_url
from automations.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    clean_stale,
    read_state,
    redis_for_serve,
)
from automations.settings import Settings
from bench.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def closed_probe() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def ping(url: str) -> str:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def test_a_configured_url_never_starts_one(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path / "d")
    with redis_for_serve(settings, probe_url=closed_probe()) as resolved:
        assert resolved is settings
    assert not (tmp_path / "d").exists()


def test_a_redis_answering_on_the_probe_url_is_used(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(redis_url=None, data_dir=tmp_path / "d")
    with redis_for_serve(settings, probe_url=redis_url) as resolved:
        assert resolved.redis_url == redis_url
    assert not (tmp_path / "d").exists()


def test_embedded_starts_is_found_by_other_commands_and_stops(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(redis_url=None, data_dir=data)
    with redis_for_serve(settings, probe_url=closed_probe()) as resolved:
        assert resolved.redis_url is not None
        version = ping(resolved.redis_url)
        assert tuple(int(p) for p in version.split(".")[:2]) >= (6, 2)
        state = read_state(data)
        assert state is not None and state["owner"] == os.getpid()
        pid = state["pid"]
        assert isinstance(pid, int) and alive(pid)
        # `automations emit` in another shell (no URL set) finds it through the data dir.
        assert embedded_url(data) == resolved.redis_url
        assert redis_url(settings) == resolved.redis_url
        client = redis.Redis.from_url(resolved.redis_url)
        client.set("kept", "1")
        client.close()
    assert not alive(pid)
    assert not (data / EMBEDDED_STATE).exists()
    assert embedded_url(data) is None
    # AOF on: the data survives into the next start.
    server = EmbeddedRedis.start(data)
    try:
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") == b"1"
        client.close()
    finally:
        server.stop()


def test_a_stale_server_of_a_killed_run_is_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = (
        "import sys, time; from pathlib import Path; "
        "from automations.embedded import EmbeddedRedis; "
        "s = EmbeddedRedis.start(Path(sys.argv[1])); print(s.url, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(data)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    old_url = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = read_state(data)
    assert state is not None
    old_pid = state["pid"]
    assert isinstance(old_pid, int) and alive(old_pid)  # orphaned by the killed run
    ping(old_url)

    server = EmbeddedRedis.start(data)
    try:
        deadline = time.monotonic() + 5
        while alive(old_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(old_pid)
        ping(server.url)
        new_state = read_state(data)
        assert new_state is not None and new_state["pid"] == server.proc.pid
    finally:
        server.stop()


def test_a_running_owner_is_not_disturbed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = EmbeddedRedis.start(data)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state = {"pid": server.proc.pid, "owner": owner.pid, "url": server.url}
        (data / EMBEDDED_STATE).write_text(json.dumps(state))
        with pytest.raises(EmbeddedRedisError, match=f"AUTOMATIONS_REDIS_URL={server.url}"):
            clean_stale(data)
        assert server.proc.poll() is None
    finally:
        owner.kill()
        owner.wait()
        server.stop()


def test_a_state_file_without_a_live_server_is_ignored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / EMBEDDED_STATE).write_text(json.dumps({"pid": 999_999_999, "owner": 1, "url": "x"}))
    assert embedded_url(data) is None
    assert clean_stale(data) is False
    assert not (data / EMBEDDED_STATE).exists()
    (data / EMBEDDED_STATE).write_text("garbage")
    assert clean_stale(data) is False
