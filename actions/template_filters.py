"""Prefect's template filters, so Prefect automations render unchanged (reference 5.3).

There is no UI here: ``ui_url`` and ``ui_resource_events_url`` render as an empty string
(a template using them still loads and renders). ``flow_run_id`` extracts a flow-run UUID from
text; the ``humanize_*`` filters cover the common cases of jinja2_humanize_extension.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_UNITS = (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600),
          ("minute", 60), ("second", 1))


def ui_url(value: Any, *args: Any) -> str:
    return ""


def flow_run_id(value: Any) -> str | None:
    """The first UUID in ``value`` (e.g. ``prefect.flow-run.<uuid>``), or None."""
    match = _UUID.search(str(value))
    return match.group(0) if match else None


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (datetime.now(UTC) - moment).total_seconds()
    return float(value)


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}{'' if count == 1 else 's'}"


def naturaldelta(value: Any) -> str:
    """"3 minutes", "a moment" for under a second."""
    seconds = abs(_seconds(value))
    for unit, size in _UNITS:
        if seconds >= size:
            return _plural(int(seconds // size), unit)
    return "a moment"


def naturaltime(value: Any) -> str:
    """"3 minutes ago" / "3 minutes from now" (a datetime, or seconds in the past)."""
    seconds = _seconds(value)
    if abs(seconds) < 1:
        return "now"
    return f"{naturaldelta(seconds)} {'ago' if seconds > 0 else 'from now'}"


def precisedelta(value: Any) -> str:
    """"1 hour, 2 minutes and 3 seconds"."""
    remaining = int(abs(_seconds(value)))
    parts = []
    for unit, size in _UNITS:
        if remaining >= size:
            parts.append(_plural(remaining // size, unit))
            remaining %= size
    if not parts:
        return "0 seconds"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


FILTERS: dict[str, Callable[..., Any]] = {
    "ui_url": ui_url,
    "ui_resource_events_url": ui_url,
    "flow_run_id": flow_run_id,
    "humanize_naturaldelta": naturaldelta,
    "humanize_naturaltime": naturaltime,
    "humanize_precisedelta": precisedelta,
}
