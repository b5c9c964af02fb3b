"""The one settings object, read from ``AUTOMATIONS_*`` environment variables and passed down."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "automations"


class Settings(BaseSettings):
    """Every tunable of every service; unknown ``AUTOMATIONS_*`` variables are ignored by
    pydantic-settings, but unknown constructor arguments are refused (``extra="forbid"``)."""

    model_config = SettingsConfigDict(env_prefix="AUTOMATIONS_", extra="forbid", frozen=True)

    redis_url: str | None = Field(
        None,
        description="Redis URL. Unset: use redis://localhost:6379/0 when it answers, "
        "else `serve` starts an embedded Redis in `data_dir`.",
    )
    redis_sentinels: str | None = Field(
        None,
        description="Redis Sentinel addresses, `host:port,host:port`: the services ask them for "
        "the master of `redis_sentinel_master` and follow failovers. `redis_url`, if set, "
        "gives the master's credentials, database and TLS (its host is not used).",
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="The master name the sentinels monitor."
    )
    probe_localhost: bool = Field(
        True,
        description="With `redis_url` unset, use a Redis answering on redis://localhost:6379/0 "
        "(false: always the embedded Redis, e.g. when that Redis belongs to something else).",
    )
    prefix: str = Field("automations", description="Prefix of every Redis key and stream.")
    partitions: int = Field(
        1, ge=1, le=1024,
        description="Partitions of the window state, dedupe markers, deadlines and outbox, "
        "set at install time (every process of an installation must agree; the first `serve` or "
        "`worker` records it). Each is one Redis Cluster slot: use at least the number of masters.",
    )
    redis_cluster: bool = Field(
        False,
        description="Connect with the Redis Cluster client; `redis_url` names any node.",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded Redis keeps its files.",
    )
    consumer_name: str = Field(
        default_factory=_default_consumer,
        description="This process's consumer name inside the consumer groups.",
    )

    # Consuming
    batch_size: int = Field(1000, ge=1, description="Entries read per XREADGROUP.")
    block_ms: int = Field(1000, ge=1, description="How long one XREADGROUP blocks waiting.")
    claim_idle_ms: int = Field(
        30_000, ge=100, description="Entries pending longer than this are reclaimed (XAUTOCLAIM)."
    )
    claim_interval_s: float = Field(5.0, gt=0, description="How often to look for stale entries.")
    max_deliveries: int = Field(
        5, ge=1, description="Deliveries before an entry is moved to its dead-letter stream."
    )
    dedupe_ttl_s: int = Field(
        1800, ge=1,
        description="How long an event id is remembered for deduplication, at least (ids are "
        "kept in sets per half of it, up to 1.5 times it: keep it above follows_wait_s and the "
        "redelivery time, and mind memory at high rates, ~90 bytes an event).",
    )
    reconnect_max_s: float = Field(
        10.0, gt=0, description="Upper bound of the reconnect backoff when Redis is away."
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="How long SIGTERM waits for in-flight work to finish."
    )
    startup_timeout_s: float = Field(
        30.0, gt=0,
        description="How long `serve` and `worker` wait for Redis at start before exiting 4.",
    )

    # Streams
    events_maxlen: int = Field(
        1_000_000, ge=1000, description="Approximate MAXLEN of the events stream."
    )
    publish_wait_s: float = Field(
        30.0, ge=0,
        description="Back-pressure: while the events stream holds more than events_maxlen "
        "entries a consumer group has not handled, a publisher waits up to this long for the "
        "engine to catch up, then fails with an overload error (what it sent is kept).",
    )
    firings_maxlen: int = Field(
        1_000_000, ge=1000,
        description="Approximate MAXLEN of the firings stream (entries; an engine entry holds "
        "the firings of one event).",
    )
    trim_interval_s: float = Field(
        10.0, gt=0, description="How often consumers trim acknowledged entries."
    )

    # Engine
    follows_wait_s: float = Field(
        900.0, ge=0, description="How long an event waits for the event it `follows`."
    )
    max_future_s: float = Field(
        3600.0, gt=0,
        description="Events whose `occurred` is further ahead of the engine's clock are "
        "dead-lettered: a producer with a wrong clock would otherwise open windows that block "
        "their trigger keys until that time.",
    )
    proactive_poll_max_s: float = Field(
        0.5, gt=0, description="Longest sleep of the proactive timer between deadline checks."
    )
    decision_log: bool = Field(
        True,
        description="Write the decision log `automations explain` reads (per event a trigger "
        "watches by name: the automations it counted for and the near misses); false: off, "
        "for maximum throughput.",
    )
    decision_log_maxlen: int = Field(
        100_000, ge=1000,
        description="Approximate MAXLEN of the decision log (entries: one per event some "
        "trigger watches by name).",
    )

    # Actions
    action_concurrency: int = Field(32, ge=1, description="Actions run at once per dispatcher.")
    action_timeout_s: float = Field(30.0, gt=0, description="Timeout of one action attempt.")
    action_max_attempts: int = Field(5, ge=1, description="Attempts before a transient failure "
                                     "is given up to the dead-letter stream.")
    action_retry_base_s: float = Field(0.5, gt=0, description="First retry delay (doubles).")
    action_retry_max_s: float = Field(60.0, gt=0, description="Largest retry delay.")
    dispatch_readers: int = Field(
        4, ge=1, description="Firing batches a dispatcher reads and runs at once."
    )
    action_retry_poll_s: float = Field(
        0.2, gt=0, description="How often a dispatcher looks for due action retries."
    )
    action_done_ttl_s: int = Field(
        7 * 86_400, ge=60, description="How long an action is remembered as done (idempotency)."
    )
    history_maxlen: int = Field(
        100_000, ge=0,
        description="Approximate MAXLEN of the history stream (what fired and what each action "
        "did, for `automations history`); 0 turns the record off.",
    )

    # Runtime (flows, scheduler, worker)
    flow_events_buffer: int = Field(
        10_000, ge=1, description="Flow/task state events kept in memory while Redis is away."
    )
    flow_flush_timeout_s: float = Field(
        5.0, ge=0, description="How long a finishing flow waits to publish buffered events."
    )
    scheduler_interval_s: float = Field(
        1.0, gt=0, description="How often the scheduler looks for due schedules and runs."
    )
    scheduler_max_catchup: int = Field(
        3, ge=1, description="Most runs one schedule gets after the scheduler was away."
    )
    worker_lease_s: float = Field(
        30.0, gt=0, description="A running flow run whose worker is silent this long is Crashed."
    )
    worker_poll_s: float = Field(
        0.5, gt=0, description="How often a worker heartbeats and checks for cancellations."
    )
    worker_cancel_grace_s: float = Field(
        5.0, ge=0, description="Time between SIGTERM and SIGKILL when cancelling a flow run."
    )

    # Prefect interoperability (docs/prefect.md)
    prefect_api_url: str | None = Field(
        None,
        description="A Prefect 3 server's API URL (`http://host:4200/api`): the bridge reads "
        "its events, and the deployment, flow-run, work-pool and work-queue actions act on it "
        "instead of this engine's runtime.",
    )
    prefect_auth_string: SecretStr | None = Field(
        None, description="The server's `PREFECT_SERVER_API_AUTH_STRING` (`user:pass`), if set."
    )
    prefect_bridge_overlap_s: float = Field(
        600.0, gt=0,
        description="How far behind its cursor each reconciliation pass of the bridge re-reads "
        "Prefect's events. An event that reaches Prefect while the bridge is down with an "
        "`occurred` older than the cursor minus this is missed.",
    )
    prefect_bridge_startup_overlap_s: float = Field(
        3600.0, gt=0,
        description="The overlap of the bridge's first pass after a start (a larger window "
        "for events that arrived late while it was down).",
    )
    prefect_bridge_reconcile_s: float = Field(
        30.0, gt=0, description="How often the bridge reconciles through Prefect's REST API."
    )
    prefect_bridge_settle_s: float = Field(
        10.0, ge=0,
        description="Reconciliation reads up to now minus this: Prefect persists events about "
        "every 5 s, so a younger window may not be complete yet.",
    )

    log_level: str = Field("INFO", description="Logging level of the services.")
    log_format: Literal["text", "json"] = Field(
        "text", description="`text`, or `json`: one JSON object per line (time, level, logger, "
        "message and ids such as automation_id, firing_id, event_id)."
    )

    # Observability (`serve` and `worker`)
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Port of /metrics (Prometheus), /healthz and /readyz. Unset: off; 0: a "
        "free port, logged at start.",
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics port listens on.")

    # Web console (`serve` and `automations ui`)
    ui_host: str = Field(
        "127.0.0.1",
        description="Address the web console listens on; any address but loopback needs "
        "`ui_token`.",
    )
    ui_port: int = Field(
        4200, ge=0, le=65535, description="Port of the web console (0: a free one, logged)."
    )
    ui_token: str | None = Field(
        None,
        description="Token the web console asks of every request (`Authorization: Bearer` or "
        "its login form). Unset: no token, allowed only on a loopback address.",
    )

    @property
    def redis_configured(self) -> bool:
        """A Redis was named (URL or sentinels) or a cluster asked for: never probe or start
        an embedded one."""
        return bool(self.redis_url or self.redis_sentinels or self.redis_cluster)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: str | None) -> str | None:
        for address in (value or "").split(","):
            host, _, port = address.strip().rpartition(":")
            if value and (not host or not port.isdigit()):
                raise ValueError(f"'{address.strip()}' is not host:port")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        """Refuse a URL redis-py cannot use here, not later as a traceback in some client."""
        if url and not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with {', '.join(REDIS_SCHEMES)}")
        return url

    @field_validator("prefix")
    @classmethod
    def _prefix_without_braces(cls, prefix: str) -> str:
        """Braces in a key name are Redis Cluster hash tags, which the layout sets itself."""
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("must be non-empty, without { or } (the key layout's hash tags)")
        return prefix
