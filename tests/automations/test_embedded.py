"""The embedded default Redis: when it starts, that it works and stops, stale-run cleanup, its
one address across restarts of ``serve`` (a worker keeps working), SIGHUP."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from automations.connection import (
    EMBEDDED_STATE,
    embedded_url,
    loopback_url,
    recorded_port,
    redis_url,
)
from automations.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    clean_stale,
    read_state,
    redis_for_serve,
)
from automations.keys import Keys
from automations.runtime.flow_runs import FlowRun
from automations.runtime.states import StateType
from automations.settings import Settings
from bench.redis_server import free_port
from tests.runtime.processes import running

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


def test_the_port_is_kept_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = EmbeddedRedis.start(data)
    first.stop()
    port = recorded_port(data)
    assert port is not None and first.url == loopback_url(port)
    second = EmbeddedRedis.start(data)
    try:
        assert second.url == first.url
        ping(second.url)
    finally:
        second.stop()
    # with probe_localhost off, other commands know the address even while serve is down
    settings = Settings(redis_url=None, data_dir=data, probe_localhost=False)
    assert redis_url(settings) == first.url


def test_a_port_taken_by_another_program_moves_and_is_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    EmbeddedRedis.start(data).stop()
    old = recorded_port(data)
    assert old is not None
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        with caplog.at_level(logging.WARNING, logger="automations.embedded"):
            server = EmbeddedRedis.start(data)
        try:
            new = recorded_port(data)
            assert new is not None and new != old and server.url == loopback_url(new)
            ping(server.url)
        finally:
            server.stop()
    assert f"port {old} of the embedded Redis" in caplog.text and f"port {new}" in caplog.text


# -- real `automations serve` and `automations worker` processes ------------------------------

FLOWS = Path(__file__).resolve().parents[1] / "runtime" / "flowdefs.py"


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """No URL and no localhost probe: `serve` starts the embedded Redis in ``tmp_path/data``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATIONS_")}
    env.update({"AUTOMATIONS_DATA_DIR": str(tmp_path / "data"),
                "AUTOMATIONS_PROBE_LOCALHOST": "false", "AUTOMATIONS_BLOCK_MS": "50",
                "AUTOMATIONS_RECONNECT_MAX_S": "0.3", "AUTOMATIONS_SHUTDOWN_TIMEOUT_S": "3",
                "AUTOMATIONS_WORKER_POLL_S": "0.2", "AUTOMATIONS_SCHEDULER_INTERVAL_S": "0.2"})
    return env


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def serve_process(
    embedded_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    """A running `automations serve` with its embedded Redis: (process, URL, redis pid)."""
    data = tmp_path / "data"
    with running(["serve"], embedded_env, tmp_path / "serve.log") as proc:
        wait_for(lambda: embedded_url(data) is not None or proc.poll() is not None,
                 "the embedded Redis")
        state = read_state(data)
        assert proc.poll() is None and state is not None
        pid = state["pid"]
        url = state["url"]
        assert isinstance(pid, int) and isinstance(url, str)
        yield proc, url, pid


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "automations", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_flow(env: dict[str, str], url: str, a: int) -> None:
    """`deployments run adder` and wait for the worker to complete it."""
    cli(env, "deployments", "run", "adder", "--param", f"a={a}")
    client = redis.Redis.from_url(url)
    try:
        def completed() -> bool:
            runs = [FlowRun.model_validate_json(raw)
                    for raw in client.hvals(Keys("automations").flow_runs)]
            return any(r.parameters.get("a") == a and r.state.type == StateType.COMPLETED
                       for r in runs)
        wait_for(completed, f"flow run with a={a} to complete")
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_serve_restarts_on_the_same_address_and_a_worker_keeps_working(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (tmp_path / "flowdefs.py").write_text(FLOWS.read_text())
    (tmp_path / "deployments.yaml").write_text(
        "deployments:\n  - name: adder\n    entrypoint: flowdefs.py:adder\n"
        "    parameters: {a: 0}\n")
    with running(["serve"], embedded_env, tmp_path / "serve1.log") as serve:
        wait_for(lambda: embedded_url(data) is not None, "the first embedded Redis")
        first = embedded_url(data)
        assert first is not None
        # `settings` names the Redis in use, found through the data directory
        shown = json.loads(cli(embedded_env, "settings", "--json"))["redis"]
        assert shown["url"] == first and shown["source"] == "embedded"
        cli(embedded_env, "deployments", "apply", str(tmp_path / "deployments.yaml"))
        with running(["worker"], embedded_env, tmp_path / "worker.log") as worker:
            run_flow(embedded_env, first, 1)
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(30) == 0
            assert embedded_url(data) is None
            with running(["serve"], embedded_env, tmp_path / "serve2.log"):
                wait_for(lambda: embedded_url(data) is not None, "the second embedded Redis")
                assert embedded_url(data) == first
                run_flow(embedded_env, first, 2)  # the worker started before took it
                assert worker.poll() is None


@pytest.mark.timeout(60)
def test_sighup_stops_serve_and_its_embedded_redis(
    serve_process: tuple[subprocess.Popen[bytes], str, int], tmp_path: Path
) -> None:
    proc, url, redis_pid = serve_process
    ping(url)
    wait_for(lambda: "serving" in (tmp_path / "serve.log").read_text(), "serve to be up")
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(30) == 0
    wait_for(lambda: not alive(redis_pid), "the embedded Redis to stop", timeout=10)
    assert not (tmp_path / "data" / EMBEDDED_STATE).exists()
    assert recorded_port(tmp_path / "data") is not None  # the address outlives the run
