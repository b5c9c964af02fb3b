"""Real local delivery targets for tests: an HTTP sink and an SMTP sink on 127.0.0.1.

``HttpSink`` is a threaded ``http.server`` recording every request; per path it can answer
with scripted statuses, headers (e.g. ``Retry-After``), bodies and delays. ``SmtpSink`` is an
aiosmtpd server recording every message. Both run in their own threads, so they serve
blocking clients (Apprise uses ``requests`` in worker threads) and async ones alike.
Use the ``http_sink`` / ``smtp_sink`` fixtures (registered in ``tests/conftest.py``).
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import orjson
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class HttpSink:
    """``url(path)`` to point a client at; ``script(path, *responses)`` queues answers for a
    path (the last one repeats); ``requests`` records everything, in arrival order."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._scripts: dict[str, list[Response]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True,
                                        name="http-sink")

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    def script(self, path: str, *responses: Response) -> None:
        with self._lock:
            self._scripts[path] = list(responses)

    def received(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    async def wait_for(self, count: int, path: str | None = None,
                       timeout: float = 5.0) -> list[Request]:
        """At least ``count`` requests (to ``path``) within ``timeout``, else AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.received(path)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} requests to {path or 'any path'}, "
                                     f"got {len(found)}: {[r.path for r in self.requests]}")
            await anyio.sleep(0.01)

    def _next(self, path: str) -> Response:
        with self._lock:
            queue = self._scripts.get(path)
            if not queue:
                return Response()
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                sink._record(Request(self.command, path, query, dict(self.headers.items()),
                                     body, time.monotonic()))
                answer = sink._next(path)
                if answer.delay and sink._stopping.wait(answer.delay):
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """Every text part of the body, joined."""
        parts = []
        for part in self.message.walk():
            if part.get_content_maintype() == "text":
                parts.append(str(part.get_content()))
        return "\n".join(parts)


class _Recorder:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.sink._lock:
            self.sink.messages.append(Mail(str(envelope.mail_from),
                                           [str(r) for r in envelope.rcpt_tos], message))
        return "250 Message accepted for delivery"


class SmtpSink:
    """An SMTP server (no TLS, no auth) recording every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Mail] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self._controller = Controller(_Recorder(self), hostname=HOST, port=self.port)

    def mailto(self, to: str = "ops@example.com", sender: str = "alerts@example.com") -> str:
        """An Apprise ``mailto://`` URL that delivers here in plain text (no STARTTLS)."""
        return (f"mailto://{HOST}:{self.port}?smtp={HOST}&mode=insecure&from={sender}"
                f"&to={to}&format=text")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Mail]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = list(self.messages)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} emails, got {len(found)}")
            await anyio.sleep(0.02)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


__all__: Sequence[str] = ("HttpSink", "Mail", "Request", "Response", "SmtpSink", "free_port",
                          "http_sink", "smtp_sink")
