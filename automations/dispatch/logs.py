"""Keep secrets out of third-party log lines while a dispatcher runs.

httpx logs every request URL at INFO, Apprise logs target URLs at DEBUG and urllib3 (under
Apprise's ``requests``) logs request paths at DEBUG and WARNING; all can hold tokens (a Slack
webhook path, an API key in the query). ``SecretSafeLogs`` attaches a filter to those loggers
(filters do not propagate, so each emitting logger is named) for the dispatcher's lifetime:
httpx request lines keep only scheme and host, Apprise records below WARNING (its warnings
name the service, not the URL) and urllib3 records below ERROR are dropped.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

HTTPX = "httpx"
APPRISE = "apprise"
URLLIB3 = "urllib3"
LOGGERS = (HTTPX, APPRISE, "urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry",
           "urllib3.response")


def host_only(url: object) -> str:
    parts = urlsplit(str(url))
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


class _Filter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(APPRISE):
            return record.levelno >= logging.WARNING
        if record.name.startswith(URLLIB3):
            return record.levelno >= logging.ERROR
        if record.name.startswith(HTTPX) and isinstance(record.args, tuple):
            record.args = tuple(
                host_only(a) if type(a).__name__ == "URL" else a for a in record.args
            )
        return True


class SecretSafeLogs:
    """Install on enter, remove on exit (owned by a dispatcher; no module-level state)."""

    def __init__(self) -> None:
        self._filter = _Filter()

    def __enter__(self) -> SecretSafeLogs:
        for name in LOGGERS:
            logging.getLogger(name).addFilter(self._filter)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)
