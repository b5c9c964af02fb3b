"""Short durations as people type them (``30s``, ``5m``, ``1h30m``, ``500ms``), for test files
and ``--since``: the Prometheus/Go spelling ``promtool`` users know, plus plain seconds and
ISO-8601 (``PT10M``) as triggers accept them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_ISO: TypeAdapter[timedelta] = TypeAdapter(timedelta)
SYNTAX = ("a duration such as 30s, 5m, 1h30m, 500ms or 2d (units ms, s, m, h, d, w), "
          "a number of seconds, or ISO-8601 such as PT10M")


def parse_duration(value: Any) -> timedelta:
    """``value`` as a non-negative ``timedelta``; ``ValueError`` naming the accepted forms."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"expected {SYNTAX}; got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _WHOLE.fullmatch(text := value.strip().lower()):
        seconds = sum(float(n) * UNITS[unit] for n, unit in _PART.findall(text))
    elif isinstance(value, str) and value.strip().upper().startswith("P"):
        try:
            seconds = _ISO.validate_python(value.strip()).total_seconds()
        except ValidationError:
            raise ValueError(f"expected {SYNTAX}; got {value!r}") from None
    else:
        raise ValueError(f"expected {SYNTAX}; got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration may not be negative; got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """``1h30m``, ``45s``, ``1.5s``, ``-10s``: the shortest form ``parse_duration`` reads back
    (negative for differences)."""
    micros = round(value.total_seconds() * 1_000_000)
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    if micros == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000)):
        whole, micros = divmod(micros, size)
        if whole:
            parts.append(f"{whole}{unit}")
    if micros:
        seconds = f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".")
        parts.append(f"{seconds}s")
    return sign + "".join(parts)
