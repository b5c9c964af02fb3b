"""HTTP classification and Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from actions.outcome import PermanentError, Reason, TransientError, classify_http, parse_retry_after


@pytest.mark.parametrize(("status", "kind", "reason"), [
    (200, None, None), (204, None, None),
    (301, PermanentError, Reason.REDIRECT),
    (400, PermanentError, Reason.HTTP_CLIENT_ERROR), (401, PermanentError, Reason.UNAUTHORIZED),
    (403, PermanentError, Reason.UNAUTHORIZED), (404, PermanentError, Reason.NOT_FOUND),
    (408, TransientError, Reason.SERVER_ERROR), (409, PermanentError, Reason.CONFLICT),
    (422, PermanentError, Reason.VALIDATION), (429, TransientError, Reason.RATE_LIMITED),
    (500, TransientError, Reason.SERVER_ERROR), (503, TransientError, Reason.SERVER_ERROR),
])
def test_classify_http(status: int, kind: type | None, reason: Reason | None) -> None:
    error = classify_http(status, {})
    if kind is None:
        assert error is None
    else:
        assert isinstance(error, kind)
        assert error is not None
        assert error.reason is reason
        assert error.details["status_code"] == status


def test_retry_after_seconds_and_date() -> None:
    assert classify_http(429, {"Retry-After": "7"}).retry_after == 7.0  # type: ignore[union-attr]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(90)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0
