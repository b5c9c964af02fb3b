"""CI-sized runs of every benchmark scenario (``--quick``), so the benchmarks do not rot.

No target is asserted (CI machines vary); each run must produce well-formed rows, and the
engine under test must really have processed events and fired. The ``peer`` smoke runs our
side and the Prefect payload conversion but not Prefect itself: installing Prefect 3.8.8 in
its own virtualenv takes ~30-45 s and 260 MB, and its server ~10-15 s to start, more than the
whole smoke budget; the full ``python -m bench peer`` run does that.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from automations.events import Event
from bench.harness import (
    Bench,
    Options,
    Row,
    latency_figures,
    percentile,
    scripted_commands,
)
from bench.prefect import to_prefect
from bench.scenarios import ceiling, latency, memory, peer, proactive, scaleout, throughput
from bench.scenarios.latency import sent_stamp
from bench.workload import build_automations, build_events, expected_firings, group_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def bench(redis_url: str) -> AsyncIterator[Bench]:
    b = Bench(Options(quick=True, extra={"no_prefect": True}), redis_url)
    yield b
    await b.close()


def check_rows(rows: list[Row], scenario: str) -> None:
    assert rows, f"{scenario} produced no rows"
    for row in rows:
        assert row["scenario"] == scenario
        for key, value in row.items():
            assert isinstance(key, str)
            assert value is None or isinstance(value, str | int | float | bool | list), key
        if "target_met" in row:
            assert "target" in row
    orjson.dumps({"results": rows})


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


def test_workload_mix_and_interest() -> None:
    automations = build_automations(1000)
    kinds = {a.tags[1] for a in automations}
    assert kinds == {"reactive", "threshold", "proactive", "compound"}
    assert len({a.id for a in automations}) == 1000
    assert [a.id for a in build_automations(20)] == [a.id for a in automations[:20]]
    events, plan = build_events(2000)
    parsed = [Event.parse(e) for e in events[:50]]
    assert all(p.event.startswith("bench.evt.") for p in parsed)
    share = plan.interested_per_event(1000) / 1000
    assert 0.007 < share < 0.013  # each event interests about 1% of the automations
    assert {group_of(i) for i in range(1000)} == set(range(100))


def test_prefect_payload_conversion() -> None:
    automations = build_automations(20, proactive=False)
    for automation in automations:
        body = to_prefect(automation)
        assert "id" not in body
        assert body["name"] == automation.name
        trigger = body["trigger"]
        if trigger["type"] == "event":
            assert trigger["posture"] == "Reactive"
            assert isinstance(trigger["within"], float)
        else:
            assert "within" in trigger and len(trigger["triggers"]) == 2
        assert body["actions"] == [{"type": "do-nothing"}]
    _, plan = build_events(300, resources=10)
    expected = expected_firings(20, plan)
    assert sum(expected.values()) > 0


async def test_ceiling(bench: Bench) -> None:
    rows = await ceiling.run(bench)
    check_rows(rows, "ceiling")
    assert all(positive(r["events_per_second"]) for r in rows)
    assert {r["case"] for r in rows} >= {"consumer (bare)", "producer (pipelined XADD)"}


async def test_throughput(bench: Bench) -> None:
    rows = await throughput.run(bench)
    check_rows(rows, "throughput")
    measured = [r for r in rows if "events_per_second" in r]
    assert [r["automations"] for r in measured] == [10, 200, 200]
    assert [r["active_automations"] for r in measured] == [10, 200, 10]
    assert all(r["events"] == 2000 and positive(r["events_per_second"]) for r in measured)
    assert measured[1]["firings"] > 0
    assert positive(measured[1]["ratio_to_ceiling"])
    assert all(positive(r["redis_us_per_event"]) and positive(r["redis_cpu_us_per_event"])
               and positive(r["engine_cpu_us_per_event"]) for r in measured)
    # carried on until the engine read back its own announcements: one a firing
    firing = measured[1]
    assert firing["events_read_back"] == firing["firings"]
    assert firing["seconds_with_readback"] >= firing["seconds"]
    assert firing["redis_us_per_event_with_readback"] >= firing["redis_us_per_event"]
    assert firing["engine_cpu_us_per_event_with_readback"] >= firing["engine_cpu_us_per_event"]
    (cost,) = [r for r in rows if str(r.get("case", "")).startswith("Redis us per event")]
    assert cost["automations"] == 200 and cost["target_met"] is None  # judged at 1,000 only
    assert cost["redis_us_per_event_with_readback"] >= cost["redis_us_per_event"]
    assert positive(rows[-1]["ratio"])


async def test_latency(bench: Bench) -> None:
    rows = await latency.run(bench)
    check_rows(rows, "latency")
    event, hook = rows
    assert event["samples"] > 0 and positive(event["p99_ms"])
    assert event["p50_ms"] <= event["p99_ms"] <= event["max_ms"]
    assert hook["requests"] > 0 and hook["samples"] > 0


async def test_proactive(bench: Bench) -> None:
    (row,) = await proactive.run(bench)
    check_rows([row], "proactive")
    assert row["deadlines"] == 300 and row["firings"] > 0
    assert row["samples"] > 0 and row["distinct_fired"] > 0


async def test_scaleout(bench: Bench) -> None:
    rows = await scaleout.run(bench)
    check_rows(rows, "scaleout")
    one, two, summary, *clusters, ratio = rows
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["events"] == two["events"] == 1500
    assert one["firings"] > 0 and two["firings"] > 0
    assert isinstance(summary["same_firings"], bool)  # a target: reported, not asserted
    cases = [r for r in clusters if "node" not in r]
    nodes = [r for r in clusters if "node" in r]
    assert [(c["masters"], c["partitions"], c["processes"]) for c in cases] == [(1, 1, 1),
                                                                                (2, 2, 2)]
    assert all(c["events"] == 1500 and c["firings"] > 0 for c in cases)
    assert all(isinstance(c["same_firings"], bool) for c in cases)
    assert [n["holds"] for n in nodes if n["masters"] == 1] == ["{g} p0"]
    assert sorted(n["holds"] for n in nodes if n["masters"] == 2) == ["p1", "{g} p0"]
    assert all(positive(n["redis_cpu_us_per_event"]) and positive(n["redis_us_per_event"])
               for n in nodes)
    assert "global_slot_cpu_us_per_event" in cases[-1] and positive(ratio["ratio"])


async def test_memory(bench: Bench) -> None:
    rows = await memory.run(bench)
    check_rows(rows, "memory")
    buckets = rows[0]
    assert buckets["buckets"] == 3000 and positive(buckets["bytes_per_bucket"])
    rss = [r for r in rows if r["case"] == "engine RSS after loading"]
    assert [r["automations"] for r in rss] == [10, 200]
    assert all(positive(r["bytes"]) for r in rss)


async def test_peer_our_side(bench: Bench) -> None:
    rows = await peer.run(bench)
    check_rows(rows, "peer")
    ours = rows[0]
    assert ours["engine"] == "automations"
    assert ours["firings_seen"] > 0 and ours["lost_firings"] == 0
    assert "skipped" in rows[1]["engine"] and rows[1]["converted_automations"] == 20


def test_cli_writes_json(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "ceiling.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "ceiling", "--quick", "--json", str(out),
         "--redis-url", redis_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    document = orjson.loads(out.read_bytes())
    assert document["machine"]["cores"] >= 1
    assert all(r["scenario"] == "ceiling" for r in document["results"])
    assert "events_per_second" in result.stdout


def test_stats_and_stamp_helpers() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == 2.0
    assert math.isnan(percentile([], 50))
    figures = latency_figures([0.001, 0.002, 0.010])
    assert figures == {"samples": 3, "p50_ms": 2.0, "p99_ms": 10.0, "max_ms": 10.0}
    raw = orjson.dumps({"triggering_event": {"payload": {"sent": 1764030000.25}}})
    assert sent_stamp(raw) == 1764030000.25
    assert sent_stamp(b"{}") is None


def test_scripted_commands_are_every_command_the_scripts_call() -> None:
    """Their calls are in the script's own time: counted again under their names, they would
    inflate ``redis_us_per_event`` (the dedupe marker's SET goes through the ``rcall`` alias,
    DEL through ``batched``)."""
    names = scripted_commands()
    assert {"set", "del", "hgetall", "hmget", "hset", "xadd", "zadd", "sadd", "decr"} <= names
    assert not names & {"xack", "xreadgroup", "xautoclaim", "evalsha", "xlen"}


async def test_overload_quick_holds_publishers_back_and_recovers(bench: Bench) -> None:
    from bench.scenarios import overload

    [row] = await overload.run(bench)
    check_rows([row], "overload")
    assert row["published"] > 0 and row["lag_after_recovery"] == 0
    assert row["longest_stream_second_half"] > 0


async def test_durability_quick_counts_what_a_killed_redis_kept(bench: Bench) -> None:
    from bench.scenarios import durability

    rows = await durability.run(bench)
    check_rows(rows, "durability")
    by_mode = {row["mode"]: row for row in rows}
    assert by_mode["aof-always"]["lost"] == 0 and by_mode["aof-everysec"]["lost"] == 0
    assert all(positive(row["writes_per_second"]) for row in rows)


async def test_decisions_and_console_quick_produce_their_rows(bench: Bench) -> None:
    from bench.scenarios import console, decisions

    for name, scenario in (("decisions", decisions), ("console", console)):
        rows = await scenario.run(bench)
        check_rows(rows, name)


async def test_realistic_quick_drains_flow_runs_and_fires(bench: Bench) -> None:
    from bench.scenarios import realistic

    rows = await realistic.run(bench)
    check_rows(rows, "realistic")
    measured = [r for r in rows if "events_per_second" in r]
    assert [(r["automations"], r["decision_log"]) for r in measured] == [
        (100, "on"), (1_000, "on"), (100, "off"), (1_000, "off")]
    assert all(r["events"] == 2_000 and positive(r["events_per_second"]) for r in measured)
    assert all(r["firings"] > 0 and positive(r["redis_cpu_us_per_event"]) for r in measured[1::2])
    assert measured[1]["firings"] == measured[3]["firings"]  # the log changes no decision
    assert all(positive(r["ratio"]) for r in rows if "ratio" in r)


async def test_light_quick_compares_the_engine_with_the_bare_consumer(bench: Bench) -> None:
    from bench.scenarios import light

    rows = await light.run(bench)
    check_rows(rows, "light")
    bare, *engines = rows
    assert bare["case"] == "bare consumer (orjson-decode)" and positive(bare["us_per_event"])
    assert [r["automations"] for r in engines] == [10, 200]
    assert all(r["events"] == 5_000 and positive(r["ratio_to_bare"]) for r in engines)
    assert all(isinstance(r["target_met"], bool) for r in engines)  # reported, not asserted
