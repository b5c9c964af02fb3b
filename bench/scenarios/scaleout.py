"""``scaleout``: the same seeded automations and events drained by one engine process, then
two, on one Redis; then on a real Redis Cluster of 1, 2 and 3 masters (``--quick``: 1 and 2)
with as many partitions and engine processes, and 4 masters for 3 partitions (the global
slot alone on one), measuring each master's cost per event.

Firings are compared as a multiset of (automation, trigger, labels): with two processes the
events of one bucket may be evaluated in another order, so which event crossed a threshold
can differ while the firings themselves must not. Whether the triggering events also match
is reported beside it. Every cluster case is compared with the single Redis, one process.

Per node, before and after the drain: ``INFO cpu`` (the node's CPU: commands, networking,
protocol) and ``INFO commandstats`` (the commands' own time), each per event. On a machine
with a core per master the busiest master bounds the rate; the global slot (``{g}``: the
events stream, the order script, the announced events) stays on one master whatever the
count, so its share is the ceiling of scale-out: measured on the master it has alone, or
estimated as the busiest master's cost less the others' mean (each holds one partition).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.crc import key_slot

from automations.keys import GLOBAL_TAG, Keys, partition_tag
from bench.drive import Drain, drain_backlog, firing_signature, read_firings, start_engines
from bench.harness import Bench, Options, Row
from bench.procs import stop_all
from bench.redis_cluster import LocalCluster
from bench.workload import build_automations, build_events, encode

TARGET_SPEEDUP = 1.6
# (masters, partitions): one partition per master; then 4 masters for 3 partitions, where
# the global slot (slot 7233) gets a master of its own, which measures its cost directly.
LAYOUTS = ((1, 1), (2, 2), (3, 3), (4, 3))
QUICK_LAYOUTS = ((1, 1), (2, 2))  # 3 masters add ~5 s to the smoke test, no new code path

Signatures = Counter[tuple[str, str, str, str]]


@dataclass(frozen=True, slots=True)
class Case:
    """What every measurement of one run drains: automations, events, time limit."""

    size: int
    count: int
    limit: float


def recent_start(count: int) -> datetime:
    """The first event's time, so that the last one (1 ms apart) occurs now: the same
    events, ids and spacing in every measurement, with times just before its drain. The
    engines' own prefect.automation.triggered events carry the wall clock, and with several
    processes one may read them while another still evaluates the backlog's end; they move
    the shared events clock (reference 3.7), and backlog events older than a window (60 s
    for the thresholds) would find their reactive buckets already expired."""
    return (datetime.now(UTC) - timedelta(milliseconds=count + 1000)).replace(microsecond=0)


async def measure(
    bench: Bench, processes: int, case: Case, *, partitions: int = 1
) -> tuple[Row, Signatures, Drain]:
    prefix = bench.new_prefix(f"scale{processes}")
    events, _ = build_events(case.count, start=recent_start(case.count))
    engines = await start_engines(bench, prefix, build_automations(case.size),
                                  processes=processes, partitions=partitions)
    try:
        drain = await drain_backlog(bench, prefix, engines, encode(events), limit=case.limit,
                                    partitions=partitions)
    finally:
        await stop_all(engines)
    firings = await read_firings(bench.redis, Keys(prefix, partitions).outboxes)
    await bench.cleanup(prefix)
    signatures = Counter(firing_signature(f) for f in firings)
    eps = drain.handled / drain.seconds if drain.seconds > 0 else 0.0
    row: Row = {"scenario": "scaleout", "redis": "cluster" if bench.cluster else "single",
                "partitions": partitions, "automations": case.size, "processes": processes,
                "events": drain.handled, "seconds": round(drain.seconds, 3),
                "events_per_second": round(eps), "firings": len(firings), **drain.figures(),
                **drain.redis_figures()}
    return row, signatures, drain


def same_firings(one: Signatures, other: Signatures) -> bool:
    """The same multiset of (automation, trigger, labels)."""
    return Counter(s[:3] for s in one.elements()) == Counter(s[:3] for s in other.elements())


def holdings(cluster: LocalCluster, partitions: int) -> dict[int, str]:
    """What each master (by port) holds: the global slot and which partitions."""
    tags = [(f"{{{GLOBAL_TAG}}}", GLOBAL_TAG)] + [
        (f"p{n}", partition_tag(n, partitions)) for n in range(partitions)]
    held: dict[int, list[str]] = {}
    for name, tag in tags:
        held.setdefault(cluster.owner(key_slot(f"{{{tag}}}".encode())).port, []).append(name)
    return {port: " ".join(names) for port, names in held.items()}


def layout_name(masters: int, partitions: int) -> str:
    return f"cluster, {masters} masters" + (
        f", {partitions} partitions" if partitions != masters else "")


def node_rows(cluster: LocalCluster, drain: Drain, partitions: int) -> list[Row]:
    """One row per master: what it holds and its cost per event."""
    held = holdings(cluster, partitions)
    masters = len(cluster.servers)
    rows = []
    for server, node in zip(cluster.servers, drain.nodes, strict=True):
        rows.append({
            "scenario": "scaleout", "case": f"{layout_name(masters, partitions)}: one node",
            "redis": "cluster", "masters": masters, "node": f"127.0.0.1:{server.port}",
            "holds": held.get(server.port, ""), "top_commands": node.top_commands(),
            "redis_cpu_percent": round(node.cpu_seconds / drain.wall * 100) if drain.wall else 0,
            **node.per_event(drain.handled)})
    return rows


def global_share(rows: list[Row], cpu: list[float], busiest: int) -> float | None:
    """The global slot's CPU an event: its master's, when it has one to itself; else the
    busiest master's less the mean of the others' (each holding one partition)."""
    alone = [c for r, c in zip(rows, cpu, strict=True) if r["holds"] == f"{{{GLOBAL_TAG}}}"]
    if alone:
        return alone[0]
    others = cpu[:busiest] + cpu[busiest + 1:]
    if not others or not cpu[busiest]:
        return None
    return max(cpu[busiest] - sum(others) / len(others), 0.0)


def projection(rows: list[Row], summary: Row) -> Row:
    """The busiest master's cost an event, the global slot's share (``global_share``), the
    rate that share allows with a core per master, and the engine cores that rate needs."""
    cpu = [float(r["redis_cpu_us_per_event"] or 0) for r in rows]
    busiest = max(range(len(rows)), key=cpu.__getitem__)
    figures: Row = {"busiest_node": rows[busiest]["holds"],
                    "busiest_node_cpu_us_per_event": cpu[busiest],
                    "busiest_node_us_per_event": rows[busiest]["redis_us_per_event"]}
    share = global_share(rows, cpu, busiest)
    if share is not None:
        figures["global_slot_cpu_us_per_event"] = round(share, 1)
        figures["projected_ceiling_events_per_second"] = round(1e6 / share) if share else None
        engine = summary.get("engine_cpu_us_per_event")
        if share and engine:
            figures["engine_cores_at_ceiling"] = round(engine / share, 1)
    return figures


async def on_cluster(
    options: Options, masters: int, partitions: int, case: Case, reference: Signatures
) -> list[Row]:
    """``masters`` masters, ``partitions`` partitions and as many engine processes: the
    case's row (with the projection's inputs) and one row per master."""
    directory = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        with LocalCluster(directory, masters) as cluster:
            bench = Bench(options, cluster.url, nodes=cluster.urls)
            try:
                row, fired, drain = await measure(bench, partitions, case,
                                                  partitions=partitions)
            finally:
                await bench.close()
            nodes = node_rows(cluster, drain, partitions)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    summary: Row = {**row, "case": layout_name(masters, partitions), "masters": masters,
                    "same_firings": same_firings(reference, fired)
                    and row["events"] == case.count}
    summary.update(projection(nodes, summary))
    return [summary, *nodes]


def speedup_row(one: Row, two: Row, same: bool, same_events: bool, complete: bool) -> Row:
    speedup = two["events_per_second"] / one["events_per_second"] \
        if one["events_per_second"] else 0.0
    return {
        "scenario": "scaleout", "case": "2 processes / 1", "redis": "single",
        "automations": one["automations"], "processes": 2, "ratio": round(speedup, 2),
        "same_firings": same and complete, "same_triggering_events": same_events,
        "target": f">= {TARGET_SPEEDUP}x, same firings",
        "target_met": speedup >= TARGET_SPEEDUP and same and complete,
    }


def cluster_ratio(first: Row, last: Row) -> Row:
    """The rate of the largest cluster over that of one master (no target: this machine's
    two cores are shared by every master, engine and the load generator)."""
    rate = first["events_per_second"]
    return {"scenario": "scaleout", "redis": "cluster",
            "case": f"{layout_name(last['masters'], last['partitions'])} / 1 master",
            "automations": first["automations"], "masters": last["masters"],
            "ratio": round(last["events_per_second"] / rate, 2) if rate else None}


async def run(bench: Bench) -> list[Row]:
    size, count, limit = (100, 1_500, 20.0) if bench.quick else (1_000, 20_000, 60.0)
    case = Case(size, count, limit)
    one, fired_one, _ = await measure(bench, 1, case)
    two, fired_two, _ = await measure(bench, 2, case)
    complete = one["events"] == two["events"] == count
    rows = [one, two, speedup_row(one, two, same_firings(fired_one, fired_two),
                                  fired_one == fired_two, complete)]
    clusters = [r for masters, partitions in (QUICK_LAYOUTS if bench.quick else LAYOUTS)
                for r in await on_cluster(bench.options, masters, partitions, case, fired_one)]
    cases = [r for r in clusters if "node" not in r and r["masters"] == r["partitions"]]
    return [*rows, *clusters, cluster_ratio(cases[0], cases[-1])]
