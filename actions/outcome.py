"""Classified action outcomes: every executor failure is transient (retry) or permanent (stop).

Alertmanager's lesson (STYLE.md 3): executors raise ``TransientError`` / ``PermanentError`` with a
``Reason`` that doubles as a metric label and as ``payload.reason`` of the action event; the
retry loop in the dispatcher looks only at the class, never at messages. Messages must already
be redacted (``actions.secrets.redact``) when they can contain a target URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from http import HTTPStatus
from typing import Any


class Reason(StrEnum):
    """Why an action failed; stable strings (metric labels, event payloads)."""

    HTTP_CLIENT_ERROR = "http-client-error"
    """4xx other than 401/403/404/408/409/422/429: the request is wrong; retrying won't help."""
    UNAUTHORIZED = "unauthorized"
    """401/403: the credentials are wrong or missing."""
    NOT_FOUND = "not-found"
    """404, or a target (automation, deployment, flow run) that does not exist."""
    CONFLICT = "conflict"
    """409: the target is in a state that refuses the change."""
    VALIDATION = "validation"
    """422 or a refused state change."""
    REDIRECT = "redirect"
    """3xx: redirects are not followed (the target should be fixed)."""
    RATE_LIMITED = "rate-limited"
    """429 (honours Retry-After)."""
    SERVER_ERROR = "server-error"
    """5xx and 408: the target is having trouble; retry later."""
    TIMEOUT = "timeout"
    """The attempt exceeded its timeout."""
    CONNECTION = "connection"
    """Could not connect, DNS failure, connection reset."""
    DELIVERY = "delivery"
    """A notification service refused or failed without a more precise cause."""
    TEMPLATE = "template"
    """A template failed to render (or breaks a sandbox limit)."""
    MISSING_TARGET = "missing-target"
    """No target could be selected or inferred (e.g. no event to infer from)."""
    MISSING_SECRET = "missing-secret"
    """A referenced block / secret is not stored and not in the environment."""
    INVALID_TARGET = "invalid-target"
    """A target URL that Apprise or the HTTP client cannot use, or a non-HTTP webhook URL."""
    UNSUPPORTED = "unsupported"
    """No executor (or no runtime port) for this action type."""
    INTERNAL = "internal"
    """An unexpected exception inside an executor (a bug); treated as transient."""


class ActionError(Exception):
    """Base of classified action failures; ``details`` go into the ``.failed`` event payload."""

    transient: bool = False

    def __init__(
        self, reason: Reason, message: str, *, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason.value}: {self.message})"


class TransientError(ActionError):
    """Worth retrying: the same request may succeed later. ``retry_after`` (seconds) is the
    server's wish (Retry-After) and overrides the backoff when it is larger."""

    transient = True

    def __init__(
        self,
        reason: Reason,
        message: str,
        retry_after: float | None = None,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(reason, message, details=details)
        self.retry_after = retry_after


class PermanentError(ActionError):
    """Not worth retrying: fail the action at once."""


_PERMANENT_BY_STATUS: dict[int, Reason] = {
    401: Reason.UNAUTHORIZED,
    403: Reason.UNAUTHORIZED,
    404: Reason.NOT_FOUND,
    409: Reason.CONFLICT,
    422: Reason.VALIDATION,
}


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def classify_http(
    status: int, headers: Mapping[str, str] | None = None, *, what: str = "HTTP"
) -> TransientError | PermanentError | None:
    """None for 2xx; otherwise the classified error to raise (shared by webhook and Apprise).

    429 and 5xx (and 408) are transient, 429's Retry-After honoured; other statuses are
    permanent: redirects are not followed and a 4xx will not fix itself.
    """
    if 200 <= status < 300:
        return None
    text = f"{what} returned {_status_text(status)}"
    details = {"status_code": status}
    if status == 429:
        retry_after = parse_retry_after(_header(headers, "retry-after"))
        return TransientError(Reason.RATE_LIMITED, text, retry_after, details=details)
    if status >= 500 or status == 408:
        retry_after = parse_retry_after(_header(headers, "retry-after"))
        return TransientError(Reason.SERVER_ERROR, text, retry_after, details=details)
    if 300 <= status < 400:
        return PermanentError(Reason.REDIRECT, text, details=details)
    reason = _PERMANENT_BY_STATUS.get(status, Reason.HTTP_CLIENT_ERROR)
    return PermanentError(reason, text, details=details)


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
