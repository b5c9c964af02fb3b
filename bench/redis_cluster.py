"""A real Redis Cluster of a few masters (and optionally their replicas) on free loopback
ports, for the test suite and the benchmarks: started (``redis-cli --cluster create``), its
slots moved between masters while clients run (``reshard``, ``move_slot``), a master swapped
with its replica as in a rolling maintenance (``failover``), a master killed (``kill``) and its
replica promoted by the cluster itself (``wait_promoted``), and stopped.

Waits have deadlines and poll (never a fixed sleep); every call returns once the cluster
agrees on the change (``cluster_state:ok`` and one slot map on every live node).
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


def distinct_free_ports(count: int) -> list[int]:
    """``count`` free loopback ports, no two the same."""
    found: list[int] = []
    while len(found) < count:
        port = free_port()
        if port not in found:
            found.append(port)
    return found


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


def _roles(node: redis.Redis) -> list[tuple[int, str]]:
    """(port, id of its master or "-") of every node, as ``node`` sees them."""
    raw: str = node.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    return sorted((int(f[1].split("@")[0].rpartition(":")[2]), f[3])
                  for f in (line.split() for line in raw.splitlines()))


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
    """``masters`` ``redis-server --cluster-enabled yes`` in ``directory``, each with
    ``replicas`` replicas (none by default; ``servers`` holds all the nodes, masters first).

    With ``tls``, each node also serves TLS on a port of its own (``tls_ports``), and the
    cluster bus runs over TLS: a client that connects over TLS is told the nodes' TLS ports
    (``tls_url``). The plain ports stay open for the helpers here."""

    def __init__(self, directory: Path, masters: int = 3, extra: Sequence[str] = (),
                 tls: ClusterTls | None = None, replicas: int = 0) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (apt-get install -y redis-tools)")
        if replicas and masters < 3:
            raise ValueError("replicas need 3 masters or more (redis-cli --cluster create)")
        self.cli = cli
        self.tls = tls
        self.masters = masters
        self.replicas = replicas
        self.dead: set[int] = set()  # ports of the nodes ``kill`` ended
        count = masters * (1 + replicas)
        # every port the nodes listen on, distinct: the OS may hand a closed probe's port out
        # again, and with six nodes (twelve ports, more with TLS) two picks did collide
        ports = distinct_free_ports(count * (3 if tls else 2))
        self.tls_ports = ports[2 * count:] if tls else []
        # a replica's first full sync starts at once, not after the default 5 s wait for others
        sync = ["--repl-diskless-sync-delay", "0"] if replicas else []
        self.servers = [
            RedisServer(directory / f"node-{n}", port=ports[n], extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                # else port + 10000: maybe taken, or > 65535
                "--cluster-port", str(ports[count + n]),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), *sync, *self._tls_args(n),
                *extra])
            for n in range(count)]

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
        """One URL per node created as a master; any of them is a valid
        ``AUTOMATIONS_REDIS_URL`` (after a ``failover`` too: any node names the cluster)."""
        return [s.url for s in self.servers[:self.masters]]

    @property
    def url(self) -> str:
        return self.urls[0]

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)

    @property
    def live(self) -> list[RedisServer]:
        """The servers not killed (``kill``)."""
        return [s for s in self.servers if s.port not in self.dead]

    def _first(self) -> redis.Redis:
        """A client of the first live node (the one asked about the cluster's state)."""
        return self.client(self.live[0].port)

    def _each(self, fn: Callable[[redis.Redis], Any]) -> list[Any]:
        out = []
        for server in self.live:
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
                subprocess.run(  # on one host, the first ``masters`` nodes become masters
                    [self.cli, "--cluster", "create",
                     *(f"127.0.0.1:{s.port}" for s in self.servers),
                     "--cluster-replicas", str(self.replicas), "--cluster-yes"],
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
        """Remove every key on every master (between tests that share the cluster); replicas
        follow their masters (and refuse writes)."""
        for master in self.nodes():
            with self.client(master.port) as node:
                node.flushall()

    # -- state ---------------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        """The live masters, as the first live node sees them."""
        with self._first() as first:
            raw: str = first.execute_command("CLUSTER", "NODES")
        found = []
        for line in raw.splitlines():
            fields = line.split()
            flags = fields[2].split(",")
            host, _, port = fields[1].split("@")[0].rpartition(":")
            if "master" in flags and "fail" not in flags and int(port) not in self.dead:
                found.append(Node(host or "127.0.0.1", int(port), fields[0]))
        return sorted(found, key=lambda n: n.port)

    def owner(self, slot: int) -> Node:
        """The master that serves ``slot`` now."""
        with self._first() as first:
            ranges = first.execute_command("CLUSTER", "SLOTS")
        for low, high, master, *_ in ranges:
            if int(low) <= slot <= int(high):
                return Node(master[0] or "127.0.0.1", int(master[1]), master[2])
        raise ClusterError(f"slot {slot} is not served")

    def slot_counts(self) -> dict[str, int]:
        """Slots per master (by address)."""
        counts = {n.address: 0 for n in self.nodes()}
        with self._first() as first:
            ranges = first.execute_command("CLUSTER", "SLOTS")
        for low, high, master, *_ in ranges:
            counts[f"{master[0] or '127.0.0.1'}:{master[1]}"] += int(high) - int(low) + 1
        return counts

    def _agreed(self) -> bool:
        try:
            states = self._each(lambda node: node.cluster("INFO")["cluster_state"])
            maps = self._each(_slot_map)
            views = self._each(_roles)
            replication = self._each(lambda node: node.info("replication"))
        except redis.RedisError:
            return False
        replicas = [r for r in replication if r["role"] == "slave"]
        # before a kill, every replica the cluster was created with; after one, the promoted
        # replicas are masters and those of a dead master wait for nothing
        linked = all(r.get("master_link_status") == "up"
                     and int(r.get("master_port", 0)) not in self.dead for r in replicas)
        expected = bool(self.dead) or len(replicas) == self.masters * self.replicas
        return (all(s == "ok" for s in states) and all(m == maps[0] for m in maps)
                and not {port for *_, port in maps[0]} & self.dead
                and all(v == views[0] for v in views) and linked and expected)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every live node says ``cluster_state:ok``, all have one slot map (no slot
        served by a killed node) and one view of who replicates whom, and every live replica's
        link to its master is up (a manual failover needs it)."""
        _deadline_poll(self._agreed, timeout_s, "cluster_state:ok on every live node")

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

    # -- failover ------------------------------------------------------------------------------
    def replica_of(self, master: Node) -> Node:
        """A replica of ``master``, as ``master`` sees it."""
        with self.client(master.port) as node:
            lines: list[str] = node.execute_command("CLUSTER", "REPLICAS", master.id)
        if not lines:
            raise ClusterError(f"{master.address} has no replica")
        fields = lines[0].split()
        host, _, port = fields[1].split("@")[0].rpartition(":")
        return Node(host or "127.0.0.1", int(port), fields[0])

    def failover(self, master: Node, timeout_s: float = READY_TIMEOUT_S) -> Node:
        """A manual failover, as in a rolling maintenance: ``CLUSTER FAILOVER`` on a replica
        of ``master`` (which waits until the replica caught up, then swaps their roles).
        Returns the new master once every node maps ``master``'s slots to it and ``master``
        replicates it."""
        replica = self.replica_of(master)
        with self.client(replica.port) as node:
            node.execute_command("CLUSTER", "FAILOVER")

        def swapped() -> bool:
            served = self._served_by_master(replica)
            return served is not None and master.port not in served and self._agreed()

        _deadline_poll(swapped, timeout_s, f"{replica.address} in place of {master.address}")
        return replica

    def _served_by_master(self, node: Node) -> set[int] | None:
        """The ports serving slots as ``node`` sees them, once ``node`` is a master (``None``
        before, or while it does not answer)."""
        try:
            with self.client(node.port) as client:
                if client.info("replication")["role"] != "master":
                    return None
                return {port for *_, port in _slot_map(client)}
        except redis.RedisError:
            return None

    # -- a dying master ------------------------------------------------------------------------
    def kill(self, master: Node) -> Node:
        """SIGKILL ``master``'s ``redis-server`` (no handover: what it acknowledged but had not
        replicated yet is gone). Returns its replica, which the cluster promotes by itself once
        the other masters find ``master`` unreachable for ``NODE_TIMEOUT_MS``
        (``wait_promoted``). The process is reaped here, so ``stop`` passes over it."""
        replica = self.replica_of(master)
        server = next(s for s in self.servers if s.port == master.port)
        if server.proc is None:
            raise ClusterError(f"{master.address} is not running")
        server.proc.kill()
        server.proc.wait(5)
        self.dead.add(master.port)
        return replica

    def wait_promoted(self, replica: Node, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Until ``replica`` is a master serving slots and every live node agrees on it
        (``wait_ready``); returns the seconds waited."""
        started = time.monotonic()

        def promoted() -> bool:
            served = self._served_by_master(replica)
            return served is not None and replica.port in served and self._agreed()

        _deadline_poll(promoted, timeout_s, f"{replica.address} promoted")
        return time.monotonic() - started
