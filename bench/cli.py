"""The one entry point: parse arguments, own the Redis, run scenarios, print and save rows."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench.harness import Bench, Options, RedisProcess, Row
from bench.report import markdown
from bench.scenarios import (
    ceiling,
    decisions,
    durability,
    latency,
    light,
    memory,
    overload,
    peer,
    proactive,
    realistic,
    scaleout,
    throughput,
)
from bench.scenarios import console as console_scenario

Scenario = Callable[[Bench], Awaitable[list[Row]]]

SCENARIOS: dict[str, Scenario] = {
    "ceiling": ceiling.run,
    "throughput": throughput.run,
    "latency": latency.run,
    "proactive": proactive.run,
    "scaleout": scaleout.run,
    "memory": memory.run,
    "peer": peer.run,
    "decisions": decisions.run,
    "overload": overload.run,
    "durability": durability.run,
    "console": console_scenario.run,
    "realistic": realistic.run,
    "light": light.run,
}

console = Console(width=None if sys.stdout.isatty() else 1000)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmarks of the automations engine.")
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run of seconds")
    parser.add_argument("--json", type=Path, help="write {'results': [...]} to this file")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--no-prefect", action="store_true",
                        help="peer: skip installing and running Prefect (our side only)")
    return parser.parse_args(argv)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def print_table(title: str, rows: list[Row]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns and k != "scenario")
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


async def run_scenarios(names: list[str], options: Options) -> tuple[list[Row], Row]:
    server = None if options.redis_url else RedisProcess()
    if server is not None:
        server.start()
    try:
        bench = Bench(options, options.redis_url or (server.url if server else ""))
        try:
            machine = await bench.machine()
            results: list[Row] = []
            machine["load_average_1m"] = {}
            for name in names:
                started = time.perf_counter()
                load = os.getloadavg()[0]
                rows = await SCENARIOS[name](bench)
                print_table(f"{name} ({time.perf_counter() - started:.1f} s, load average "
                            f"{load:.1f} at start)", rows)
                machine["load_average_1m"][name] = round(load, 2)
                results.extend(rows)
            return results, machine
        finally:
            await bench.close()
    finally:
        if server is not None:
            server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    options = Options(quick=args.quick, redis_url=args.redis_url,
                      extra={"no_prefect": args.no_prefect})
    results, machine = asyncio.run(run_scenarios(names, options))
    if args.json:
        document = {"results": results, "machine": machine, "quick": args.quick,
                    "command": " ".join(["python -m bench", *sys.argv[1:]])}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(results))
    missed = [r for r in results if r.get("target_met") is False]
    if missed:
        console.print(f"[yellow]{len(missed)} target(s) missed[/] (see the 'target' column)")
