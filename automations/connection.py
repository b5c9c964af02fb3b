"""Builds the ``redis.asyncio`` client every service uses: one Redis, the master a set of
sentinels names, or (``redis_cluster``) redis-py's Redis Cluster client, found from any node.

The cluster client is handed out typed as ``redis.asyncio.Redis`` so that callers keep one code
path: it speaks the same commands, and every key carries a hash tag (``automations.keys``) so
that each script touches one slot. Where redis-py's cluster client misbehaves while slots
migrate, it is worked around here (``_AsyncCluster``, ``connect_cluster``; docs/cluster.md).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.cluster
import redis.exceptions
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import parse_url
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

from automations.command_packing import fast_packing
from automations.errors import AutomationsError
from automations.settings import Settings

DEFAULT_URL = "redis://localhost:6379/0"
EMBEDDED_STATE = "embedded-redis.json"  # written by `automations serve` (automations.embedded)
RETRIES = 3  # per command, on a fresh connection each time (see ``_retry``)
RETRIED: tuple[type[redis.exceptions.RedisError], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
EMBEDDED_PORT = "redis.port"  # the embedded Redis's port, kept across restarts of `serve`
MAX_CONNECTIONS = 10_000
"""Per pool (per node on a cluster): redis-py's default pools (100 connections since
redis-py 6) raise ``MaxConnectionsError`` once that many commands are in flight, which the
services would take for an outage: a dispatcher whose batch held hundreds of firings leased by
a stalled peer, each noting its later check with a call of its own, lost its leases that way.
The services bound their concurrency themselves (``action_concurrency``, one script call per
partition)."""
# What a lost connection looks like from redis-py (plus BUSY LOADING after a restart, and on a
# cluster: a failover, a slot without a master for now, or a slot in migration whose keys are
# split between two masters: redis-py retries TRYAGAIN and redirections a few times, then
# raises ClusterError "TTL exhausted").
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
    OSError,
)


class ClusterUnavailable(redis.exceptions.ConnectionError):
    """No node of the cluster answered, or the nodes do not cover every slot yet (redis-py
    says so with a bare ``RedisClusterException``): an outage, retried like a lost
    connection."""


class NotACluster(AutomationsError):
    """``AUTOMATIONS_REDIS_CLUSTER=true`` but the named Redis is not a cluster node (or will
    not show this user the slot map)."""


def _error_reply(exc: BaseException) -> redis.exceptions.ResponseError | None:
    """The server's error reply among the causes of ``exc``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.exceptions.ResponseError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _cluster_error(exc: redis.exceptions.RedisClusterException, url: str) -> Exception:
    """redis-py says "Cluster mode is not enabled" for any error reply to CLUSTER SLOTS: the
    reply itself (``__context__``) tells a plain Redis from an ACL refusal."""
    if "not enabled" not in str(exc):
        return ClusterUnavailable(f"Redis Cluster at {display_url(url)}: {exc}")
    found = _error_reply(exc)
    reply = str(found or "cluster_enabled:0")
    if isinstance(found, redis.exceptions.NoPermissionError):
        return NotACluster(
            f"Redis Cluster at {display_url(url)}: the user may not read the slot map "
            f"({reply}); its ACL needs +cluster|slots")
    return NotACluster(
        f"AUTOMATIONS_REDIS_CLUSTER=true but the Redis at {display_url(url)} is not a "
        f"cluster node ({reply}): unset AUTOMATIONS_REDIS_CLUSTER, or name a node of the "
        f"cluster in AUTOMATIONS_REDIS_URL")


class _LastReleasedFirst(collections.deque[Any]):
    """A node's free connections, handed out most recently released first."""

    def popleft(self) -> Any:
        return self.pop()


class _AsyncCluster(AsyncRedisCluster):
    """redis-py's async cluster client whose start-up failures are typed (``_cluster_error``),
    so that waiting for an unreachable cluster is the same backoff as for one Redis.

    On an ASK redirect (a slot in migration) redis-py sends ASKING, releases that connection,
    then sends the command on the connection it takes next: with its first-in-first-out pool
    that is another one whenever several are free, so the command lacks ASKING and bounces
    between the two masters until redis-py gives up ("TTL exhausted"). Each node's pool is
    made last-in-first-out here: nothing awaits between the release and the next take, so the
    command follows ASKING on the same connection."""

    url = ""

    async def initialize(self, *args: Any, **kwargs: Any) -> _AsyncCluster:
        try:
            await super().initialize(*args, **kwargs)
        except redis.exceptions.SlotNotCoveredError:
            raise
        except redis.exceptions.RedisClusterException as exc:
            raise _cluster_error(exc, self.url) from exc
        manager = self.nodes_manager
        made = manager.connection_kwargs.get("connection_class")
        if isinstance(made, type):  # nodes found later (a MOVED to a new master) pack fast too
            manager.connection_kwargs["connection_class"] = fast_packing(made)
        for node in manager.nodes_cache.values():
            node.connection_class = fast_packing(node.connection_class)
            free = getattr(node, "_free", None)
            if isinstance(free, collections.deque) and not isinstance(free, _LastReleasedFirst):
                node._free = _LastReleasedFirst(free, maxlen=free.maxlen)
        return self


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def embedded_url(data_dir: Path) -> str | None:
    """URL of the embedded Redis a running `automations serve` started in ``data_dir``."""
    try:
        state = json.loads((data_dir / EMBEDDED_STATE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not pid_alive(state.get("pid")):
        return None
    url = state.get("url")
    return url if isinstance(url, str) else None


def recorded_port(data_dir: Path) -> int | None:
    """The port the embedded Redis of ``data_dir`` uses (running or not), if it ever ran."""
    try:
        port = int((data_dir / EMBEDDED_PORT).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def loopback_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    return [(host, int(port)) for host, _, port in
            (a.strip().rpartition(":") for a in (settings.redis_sentinels or "").split(","))]


def redis_url(settings: Settings) -> str:
    """The configured URL, else a running embedded Redis in ``data_dir``, else localhost (or,
    with ``probe_localhost`` off, the embedded Redis's recorded address)."""
    if settings.redis_sentinels:  # a name for messages; clients come from `connect`
        return f"redis+sentinel://{settings.redis_sentinels}/{settings.redis_sentinel_master}"
    if settings.redis_url:
        return settings.redis_url
    running = embedded_url(settings.data_dir)
    if running is not None:
        return running
    port = None if settings.probe_localhost else recorded_port(settings.data_dir)
    return DEFAULT_URL if port is None else loopback_url(port)


def unreachable_hint(settings: Settings) -> str:
    """Why no URL was configured, for the "cannot reach Redis" message ("" if one was)."""
    if settings.redis_configured:
        return ""
    return (f" (AUTOMATIONS_REDIS_URL is unset and no `automations serve` runs an embedded "
            f"Redis in {settings.data_dir})")


def _retry() -> Retry:
    """A command that meets a dead connection (Redis restarted, a failover, an idle
    connection cut) is sent again on a fresh one, a few times with a growing delay: redis-py
    pools made by ``from_url`` retry nothing, so after a restart every pooled connection would
    fail one command each. Re-sending is safe here: events carry ids the engine dedupes, and
    every script marks its work done in the same atomic step."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES,
                 supported_errors=RETRIED)


def _sync_retry() -> SyncRetry:
    return SyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES,
                     supported_errors=RETRIED)


def _master_kwargs(settings: Settings) -> dict[str, Any]:
    """Credentials, database and TLS of the master, from ``redis_url`` when given."""
    if not settings.redis_url:
        return {}
    kwargs = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    return {k: v for k, v in kwargs.items() if k not in ("host", "port", "path")}


def check_topology(settings: Settings) -> None:
    """Sentinels and a cluster exclude each other (a cluster fails over by itself), and a
    cluster is never the embedded Redis: refuse both before connecting."""
    if not settings.redis_cluster:
        return
    if settings.redis_sentinels:
        raise AutomationsError(
            "AUTOMATIONS_REDIS_CLUSTER=true and AUTOMATIONS_REDIS_SENTINELS are both set: a "
            "Redis Cluster fails over by itself; unset AUTOMATIONS_REDIS_SENTINELS")
    if not settings.redis_url:
        raise AutomationsError(
            "AUTOMATIONS_REDIS_CLUSTER=true needs AUTOMATIONS_REDIS_URL naming a node of the "
            "cluster (any one: the others are found from it)")


def _cluster_url(url: str) -> str:
    """The cluster has database 0 only and no unix sockets: say so in our words."""
    if url.startswith("unix://"):
        raise AutomationsError(f"Redis Cluster at {display_url(url)}: a cluster is reached "
                               f"over TCP (redis:// or rediss://), not a unix socket")
    db = parse_url(url).get("db") or 0  # type: ignore[no-untyped-call]
    if int(db) != 0:
        raise AutomationsError(f"Redis Cluster at {display_url(url)}: a cluster has database "
                               f"0 only (drop /{db} from AUTOMATIONS_REDIS_URL)")
    return url


def connect_cluster(url: str, common: dict[str, Any]) -> aioredis.Redis:
    """redis-py's async cluster client from any node's URL (credentials and TLS as in the
    URL), with ``common``'s retry, timeouts and health checks. A MOVED reply updates the
    slot it names (``reinitialize_steps=0``): redis-py's default closes every connection on
    each fifth MOVED, under the commands other tasks have in flight on them."""
    client = cast(_AsyncCluster, _AsyncCluster.from_url(
        _cluster_url(url), reinitialize_steps=0, **common))
    client.url = url
    return cast(aioredis.Redis, client)


def connect(settings: Settings, *, url: str | None = None) -> aioredis.Redis:
    """A pooled client; bytes responses (decode in the caller, orjson is faster). With
    sentinels, a client of the current master that finds the new one after a failover; with
    ``redis_cluster``, the cluster client (module docstring)."""
    check_topology(settings)
    common: dict[str, Any] = {"decode_responses": False, "socket_connect_timeout": 5,
                              "health_check_interval": 30, "retry": _retry(),
                              "max_connections": MAX_CONNECTIONS}
    if settings.redis_cluster:
        return connect_cluster(url or redis_url(settings), common)
    if settings.redis_sentinels and url is None:
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            sentinel_addresses(settings), socket_connect_timeout=5)
        master: aioredis.Redis = sentinel.master_for(
            settings.redis_sentinel_master, **{**_master_kwargs(settings), **common})
        return with_fast_packing(master)
    return with_fast_packing(aioredis.Redis.from_url(url or redis_url(settings), **common))


def with_fast_packing(client: aioredis.Redis) -> aioredis.Redis:
    """``client`` packing commands with ``automations.command_packing`` (before its pool has
    made any connection)."""
    pool = client.connection_pool
    pool.connection_class = fast_packing(pool.connection_class)
    return client


def connect_sync(settings: Settings) -> redis.Redis:
    """The synchronous ``connect`` (for ``emit()`` from scripts and flows)."""
    check_topology(settings)
    common: dict[str, Any] = {"socket_connect_timeout": 5, "retry": _sync_retry(),
                              "max_connections": MAX_CONNECTIONS}
    if settings.redis_cluster:
        url = _cluster_url(redis_url(settings))
        try:  # the sync client discovers the cluster here, not at its first command
            cluster = redis.cluster.RedisCluster.from_url(
                url, **common)
        except redis.exceptions.SlotNotCoveredError:
            raise
        except redis.exceptions.RedisClusterException as exc:
            raise _cluster_error(exc, url) from exc
        return cast(redis.Redis, cluster)
    if settings.redis_sentinels:
        sentinel = SyncSentinel(  # type: ignore[no-untyped-call]
            sentinel_addresses(settings), socket_connect_timeout=5)
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_master, **{**_master_kwargs(settings), **common})
        return master
    return redis.Redis.from_url(redis_url(settings), **common)


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
