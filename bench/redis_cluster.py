"""A real Redis Cluster of a few masters on free loopback ports, for the test suite and the
benchmarks: started (``redis-cli --cluster create``), its slots moved between masters while
clients run (``reshard``, ``move_slot``), and stopped.

Waits have deadlines and poll (never a fixed sleep); every call returns once the cluster
agrees on the change (``cluster_state:ok`` and one slot map on every node).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from bench.redis_server import RedisServer, free_port

NODE_TIMEOUT_MS = 2000
READY_TIMEOUT_S = 30.0
MIGRATE_BATCH = 100
MIGRATE_TIMEOUT_MS = 5000
POLL_S = 0.05


class ClusterError(RuntimeError):
    """The cluster could not be created or changed in time."""


@dataclass(frozen=True, slots=True)
class Node:
    host: str
    port: int
    id: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def _slot_map(node: redis.Redis) -> list[tuple[int, int, int]]:
    """(first slot, last slot, master port) of every range, as ``node`` sees them."""
    ranges: Any = node.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in ranges)


def _deadline_poll(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} not reached within {timeout_s:g} s")
        time.sleep(POLL_S)


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """A server certificate (and its CA) every node serves TLS with, beside its plain port."""

    cert: Path
    key: Path
    ca: Path


class LocalCluster:
    """``masters`` ``redis-server --cluster-enabled yes`` in ``directory``, no replicas.

    With ``tls``, each node also serves TLS on a port of its own (``tls_ports``), and the
    cluster bus runs over TLS: a client that connects over TLS is told the nodes' TLS ports
    (``tls_url``). The plain ports stay open for the helpers here."""

    def __init__(self, directory: Path, masters: int = 3, extra: Sequence[str] = (),
                 tls: ClusterTls | None = None) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (apt-get install -y redis-tools)")
        self.cli = cli
        self.tls = tls
        self.tls_ports = [free_port() for _ in range(masters)] if tls else []
        self.servers = [
            RedisServer(directory / f"node-{n}", extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),  # else port + 10000: maybe taken, or > 65535
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), *self._tls_args(n), *extra])
            for n in range(masters)]

    def _tls_args(self, n: int) -> list[str]:
        if self.tls is None:
            return []
        return ["--tls-port", str(self.tls_ports[n]), "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no", "--tls-cluster", "yes", "--tls-replication", "yes"]

    def tls_url(self, *, verify: bool = True) -> str:
        """A ``rediss://`` URL of the first node's TLS port (the CA named when ``verify``)."""
        if self.tls is None:
            raise ClusterError("this cluster serves no TLS")
        query = f"ssl_ca_certs={self.tls.ca}&ssl_cert_reqs=required" if verify \
            else "ssl_cert_reqs=required"
        return f"rediss://127.0.0.1:{self.tls_ports[0]}/0?{query}"

    def __repr__(self) -> str:
        return f"LocalCluster({', '.join(s.url for s in self.servers)})"

    @property
    def urls(self) -> list[str]:
        """One URL per master; any of them is a valid ``AUTOMATIONS_REDIS_URL``."""
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        return self.urls[0]

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)

    def _each(self, fn: Callable[[redis.Redis], Any]) -> list[Any]:
        out = []
        for server in self.servers:
            with self.client(server.port) as node:
                out.append(fn(node))
        return out

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            for server in self.servers:
                server.start()
            if len(self.servers) < 3:
                self._create_small()
            else:
                subprocess.run(
                    [self.cli, "--cluster", "create",
                     *(f"127.0.0.1:{s.port}" for s in self.servers),
                     "--cluster-replicas", "0", "--cluster-yes"],
                    check=True, capture_output=True, text=True, timeout=READY_TIMEOUT_S)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _create_small(self) -> None:
        """One or two masters, which ``redis-cli --cluster create`` refuses: each takes an
        equal share of the slots, then the first meets the others."""
        count = len(self.servers)
        for n, server in enumerate(self.servers):
            low, high = n * 16384 // count, (n + 1) * 16384 // count - 1
            with self.client(server.port) as node:
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        with self.client(self.servers[0].port) as first:
            for server in self.servers[1:]:
                with self.client(server.port) as node:
                    bus = node.config_get("cluster-port")["cluster-port"]
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", server.port, bus)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flush(self) -> None:
        """Remove every key on every master (between tests that share the cluster)."""
        self._each(lambda node: node.flushall())

    # -- state ---------------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        """The masters, as the first node sees them."""
        with self.client(self.servers[0].port) as first:
            raw: str = first.execute_command("CLUSTER", "NODES")
        found = []
        for line in raw.splitlines():
            fields = line.split()
            if "master" in fields[2].split(","):
                host, _, port = fields[1].split("@")[0].rpartition(":")
                found.append(Node(host or "127.0.0.1", int(port), fields[0]))
        return sorted(found, key=lambda n: n.port)

    def owner(self, slot: int) -> Node:
        """The master that serves ``slot`` now."""
        with self.client(self.servers[0].port) as first:
            ranges = first.execute_command("CLUSTER", "SLOTS")
        for low, high, master, *_ in ranges:
            if int(low) <= slot <= int(high):
                return Node(master[0] or "127.0.0.1", int(master[1]), master[2])
        raise ClusterError(f"slot {slot} is not served")

    def slot_counts(self) -> dict[str, int]:
        """Slots per master (by address)."""
        counts = {n.address: 0 for n in self.nodes()}
        with self.client(self.servers[0].port) as first:
            ranges = first.execute_command("CLUSTER", "SLOTS")
        for low, high, master, *_ in ranges:
            counts[f"{master[0] or '127.0.0.1'}:{master[1]}"] += int(high) - int(low) + 1
        return counts

    def _agreed(self) -> bool:
        try:
            states = self._each(lambda node: node.cluster("INFO")["cluster_state"])
            maps = self._each(_slot_map)
        except redis.RedisError:
            return False
        return all(s == "ok" for s in states) and all(m == maps[0] for m in maps)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every node says ``cluster_state:ok`` and all have one slot map."""
        _deadline_poll(self._agreed, timeout_s, "cluster_state:ok on every node")

    # -- moving slots --------------------------------------------------------------------------
    def reshard(self, source: Node, target: Node, slots: int) -> None:
        """Move ``slots`` slots from ``source`` to ``target`` with ``redis-cli --cluster
        reshard`` (keys migrated live); returns once the cluster agrees."""
        subprocess.run(
            [self.cli, "--cluster", "reshard", source.address, "--cluster-from", source.id,
             "--cluster-to", target.id, "--cluster-slots", str(slots), "--cluster-yes"],
            check=True, capture_output=True, text=True, timeout=READY_TIMEOUT_S * 4)
        self.wait_ready()

    def move_slot(self, slot: int, target: Node, *, batch: int = MIGRATE_BATCH,
                  between_batches: Callable[[], None] | None = None) -> None:
        """Move one slot to ``target`` as ``redis-cli --cluster reshard`` does (IMPORTING,
        MIGRATING, MIGRATE its keys ``batch`` at a time, then SETSLOT NODE on every master);
        ``between_batches`` runs after each MIGRATE, so a test can act mid-migration."""
        source = self.owner(slot)
        if source.id == target.id:
            return
        with self.client(source.port) as src, self.client(target.port) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
            while keys := src.execute_command(
                    "CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command(
                    "MIGRATE", target.host, target.port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *keys)
                if between_batches is not None:
                    between_batches()
            for node in (dst, src):
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.id)
        for other in self.nodes():
            if other.id not in (source.id, target.id):
                with self.client(other.port) as node:
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.id)
        self.wait_ready()

    def move_key(self, key: str, target: Node, *, batch: int = MIGRATE_BATCH,
                 between_batches: Callable[[], None] | None = None) -> None:
        """Move the slot of ``key`` (and every key sharing its hash tag) to ``target``."""
        self.move_slot(key_slot(key.encode()), target, batch=batch,
                       between_batches=between_batches)

    def other_master(self, key: str) -> Node:
        """A master that does not serve ``key`` now (where to move it)."""
        owner = self.owner(key_slot(key.encode()))
        return next(n for n in self.nodes() if n.id != owner.id)
