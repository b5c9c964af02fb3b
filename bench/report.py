"""Markdown tables of a results document, for docs/benchmarks.md."""

from __future__ import annotations

import math
from typing import Any

from bench.harness import Row


def cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value).replace("|", "\\|")


def table(rows: list[Row]) -> str:
    columns: list[str] = []
    for row in rows:  # lists (e.g. the peer's progress samples) stay in the JSON only
        columns.extend(k for k, v in row.items()
                       if k not in columns and k != "scenario" and not isinstance(v, list))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: list[Row]) -> str:
    """One ``###`` section with a table per scenario, in the order they ran."""
    order: list[str] = []
    for row in results:
        if row["scenario"] not in order:
            order.append(row["scenario"])
    parts = []
    for scenario in order:
        rows = [r for r in results if r["scenario"] == scenario]
        parts.append(f"### {scenario}\n\n{table(rows)}\n")
    return "\n".join(parts)
