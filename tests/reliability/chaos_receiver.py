"""The chaos run's receiver: an HTTP server that does not deduplicate, answers 500 to a
share of requests and late to another, and records each request with the idempotency key it
carries and the process that sent it.
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
LATE_S = 2.0  # a late answer comes after the action timeout: the receiver acted, the client left
ERROR_SHARE, LATE_SHARE = 0.05, 0.01


@dataclass(frozen=True, slots=True)
class Hit:
    """One request: its idempotency key, when it arrived, the answer, the sending process."""

    path: str
    key: str | None
    at: float
    answer: str  # "ok", "error" (500: nothing done) or "late" (done, answered too late)
    sender: int | None

    @property
    def acted(self) -> bool:
        return self.answer != "error"


FIRING_IN_BODY = re.compile(rb"firing=([0-9a-f-]{36})")


def _client_socket(peer_port: int, own_port: int) -> str | None:
    """The inode of the client end of a loopback TCP connection (``/proc/net/tcp``)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote = parts[1], parts[2]
            if (int(local.rsplit(":", 1)[1], 16) == peer_port
                    and int(remote.rsplit(":", 1)[1], 16) == own_port):
                return parts[9]
    return None


def _owner(inode: str, pids: Iterable[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


class QuietServer(ThreadingHTTPServer):
    """Clients that time out or die close their connections: not an error here."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Receiver:
    """An HTTP server that does not deduplicate: it records every request with the
    idempotency key it carries (the ``Idempotency-Key`` header; for Apprise, which sends none,
    the firing id in the body) and the process that sent it (by its socket)."""

    def __init__(self, seed: int, senders: Callable[[], list[int]]) -> None:
        self.hits: list[Hit] = []
        self.senders = senders
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = QuietServer((HOST, 0), self._handler())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="chaos-receiver")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def snapshot(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    def _answer(self) -> str:
        with self._lock:
            draw = self._rng.random()
        if draw < ERROR_SHARE:
            return "error"
        return "late" if draw < ERROR_SHARE + LATE_SHARE else "ok"

    def _sender(self, peer_port: int) -> int | None:
        inode = _client_socket(peer_port, self.port)
        return None if inode is None else _owner(inode, self.senders())

    def _serve(self, path: str, key: str | None, sender: int | None) -> tuple[int, float]:
        answer = self._answer()
        with self._lock:
            self.hits.append(Hit(path, key, time.monotonic(), answer, sender))
        return (500 if answer == "error" else 200), (LATE_S if answer == "late" else 0.0)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            sender: int | None = None

            def setup(self) -> None:
                super().setup()
                self.sender = receiver._sender(self.client_address[1])  # once per connection

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key")
                if key is None and (found := FIRING_IN_BODY.search(body)):
                    key = f"{found.group(1).decode()}:0"
                status, delay = receiver._serve(self.path, key, self.sender)
                if delay and receiver._stopping.wait(delay):
                    return
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # a late answer: the client has gone
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
