"""Every Redis key, stream and group name, built from one prefix (DESIGN.md section 3).

Every key carries a Redis Cluster hash tag, on a single Redis as on a cluster (one layout):

- **partition keys** (``PartitionKeys``: window state, dedupe markers, deadlines, the
  outbox) are ``<prefix>:{<tag>}:...``; one tag per partition, so each window script call
  touches one slot. The tags are chosen so that the P partitions spread evenly over the
  16,384 slots (a 3-master cluster with P = 3 holds one partition per master).
- **global keys** (``Keys``: the events stream, automations store, dispatcher ledger,
  runtime...) are ``<prefix>:{g}:...``: they share one slot, so their multi-key scripts
  and transactions work on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Protocol
from uuid import UUID

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

ENGINE_GROUP = "engine"
DISPATCH_GROUP = "dispatch"
ANNOUNCE_GROUP = "announce"  # engines, on the firings stream (automations/engine/announcer.py)
WORKERS_GROUP = "workers"


GLOBAL_TAG = "g"
MAX_PARTITIONS = 1024


class LayoutSettings(Protocol):
    @property
    def prefix(self) -> str: ...

    @property
    def partitions(self) -> int: ...


@cache
def partition_tag(number: int, partitions: int) -> str:
    """The hash tag of partition ``number`` of ``partitions``: ``p<number>``, with a suffix
    when needed so that its slot falls in the partition's share of the slot space (stable:
    the same for every process of an installation)."""
    low = number * REDIS_CLUSTER_HASH_SLOTS // partitions
    high = (number + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
    tag = f"p{number}"
    suffix = 0
    while not low <= key_slot(tag.encode()) < high:
        suffix += 1
        tag = f"p{number}.{suffix}"
    return tag


def partition_of(automation_id: UUID | str, partitions: int) -> int:
    """The partition an automation lives in (with all its triggers): from its id, stable."""
    if partitions == 1:
        return 0
    value = automation_id.int if isinstance(automation_id, UUID) else UUID(automation_id).int
    return value % partitions


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one partition: every one shares the partition's hash tag."""

    prefix: str
    number: int
    partitions: int
    base: str = field(init=False)

    def __post_init__(self) -> None:
        tag = partition_tag(self.number, self.partitions)
        object.__setattr__(self, "base", f"{self.prefix}:{{{tag}}}")

    def __repr__(self) -> str:
        return f"PartitionKeys({self.base!r}, {self.number}/{self.partitions})"

    # the outbox
    @property
    def firings(self) -> str:
        return f"{self.base}:firings"

    @property
    def dead_firings(self) -> str:
        return f"{self.base}:dead:firings"

    # markers
    def seen(self, event_id: str) -> str:
        """An event's dedupe marker as versions before ``seen_ids`` wrote it (one key an
        event): looked at for one ``dedupe_ttl_s`` after an installation's first start with
        ``seen_ids`` (``layout.SEEN_IDS_SINCE``)."""
        return f"{self.base}:seen:{event_id}"

    def seen_ids(self, slice_no: int) -> str:
        """The ids of the events this partition evaluated in one time slice (a set: about
        90 bytes an id against 143 for a key each, and one call a script for all its events)."""
        return f"{self.seen_ids_prefix}{slice_no}"

    @property
    def seen_ids_prefix(self) -> str:
        return f"{self.base}:seen-ids:"

    # trigger state
    def bucket(self, automation: str, trigger: str, key: str) -> str:
        return f"{self.bucket_prefix}{automation}:{trigger}:{key}"

    @property
    def bucket_prefix(self) -> str:
        """What every bucket key starts with: the timer reads a bucket's trigger id and its
        unresolved counter's key from the rest (``parse_bucket``, common.lua ``read_bucket``)."""
        return f"{self.base}:bucket:"

    @property
    def deadlines(self) -> str:
        return f"{self.base}:deadlines"

    def composite(self, automation: str, trigger: str) -> str:
        return f"{self.base}:composite:{automation}:{trigger}"

    def held_expect(self, automation: str, trigger: str, key: str) -> str:
        """Zset of expect events that arrived before any window of their bucket (engine)."""
        return f"{self.base}:held-expect:{automation}:{trigger}:{key}"

    def parse_bucket(self, bucket: str) -> tuple[str, str, str]:
        """A bucket key's automation id, trigger id and the key of its unresolved counter."""
        automation, trigger, key = bucket.removeprefix(self.bucket_prefix).split(":", 2)
        return automation, trigger, self.unresolved(automation, trigger, key)

    def unresolved(self, automation: str, trigger: str, key: str) -> str:
        """Expected events still needed to resolve a proactive firing of this bucket (engine)."""
        return f"{self.unresolved_prefix}{automation}:{trigger}:{key}"

    @property
    def unresolved_prefix(self) -> str:
        return f"{self.base}:unresolved:"

    @property
    def proactive_globals(self) -> str:
        """Hash trigger id -> spec of Proactive triggers with one global window (engine)."""
        return f"{self.base}:proactive-globals"

    @property
    def trigger_specs(self) -> str:
        """Hash trigger id -> the window spec the proactive timer evaluates with (engine)."""
        return f"{self.base}:trigger-specs"


@cache
def _partition_keys(prefix: str, number: int, partitions: int) -> PartitionKeys:
    if not 0 <= number < partitions:
        raise ValueError(f"partition {number} of {partitions}")
    return PartitionKeys(prefix, number, partitions)


@dataclass(frozen=True, slots=True)
class Keys:
    """The global keys, and the partitions (``partition``, ``of``, ``all_partitions``)."""

    prefix: str = "automations"
    partitions: int = 1
    g: str = field(init=False, repr=False)  # the global keys' base: ``<prefix>:{g}``

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"prefix {self.prefix!r}: braces are reserved for hash tags")
        if self.partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {self.partitions}")
        object.__setattr__(self, "g", f"{self.prefix}:{{{GLOBAL_TAG}}}")

    @classmethod
    def from_settings(cls, settings: LayoutSettings) -> Keys:
        return cls(settings.prefix, settings.partitions)

    # partitions
    def partition(self, number: int) -> PartitionKeys:
        return _partition_keys(self.prefix, number, self.partitions)

    def of(self, automation_id: UUID | str) -> PartitionKeys:
        """The partition of an automation."""
        return self.partition(partition_of(automation_id, self.partitions))

    @property
    def all_partitions(self) -> tuple[PartitionKeys, ...]:
        return tuple(self.partition(n) for n in range(self.partitions))

    @property
    def outboxes(self) -> tuple[str, ...]:
        """Every partition's firings stream (the outbox), in partition order."""
        return tuple(p.firings for p in self.all_partitions)

    @property
    def layout(self) -> str:
        """Hash of the installation's layout (``partitions``, fixed at install)."""
        return f"{self.g}:layout"

    # streams
    @property
    def events(self) -> str:
        return f"{self.g}:events"

    @property
    def runs(self) -> str:
        return f"{self.g}:runs"

    @property
    def decisions(self) -> str:
        """The engine's decision log (``engine/decisions.py``): what each event counted for."""
        return f"{self.g}:decisions"

    @property
    def history(self) -> str:
        """What the dispatcher did with each firing: one entry when it takes a firing, one per
        action outcome (``automations.insight.history``)."""
        return f"{self.g}:history"

    def dead(self, stream: str) -> str:
        """Dead-letter stream of ``stream`` (a full stream key or a short name); a
        partition's outbox has its own, in its slot (dead-lettering is one transaction)."""
        for part in self.all_partitions:
            if stream == part.firings:
                return part.dead_firings
        short = stream.removeprefix(f"{self.g}:")
        return f"{self.g}:dead:{short}"

    # markers
    def done(self, idempotency_key: str) -> str:
        return f"{self.g}:done:{idempotency_key}"

    def announced(self, slice_no: int) -> str:
        """Set of the outbox entries (``<outbox>:<entry id>``) the announcer published during
        time slice ``slice_no``: each once, though the entry is acked after
        (``engine/announcer.py``)."""
        return f"{self.g}:announced:{slice_no}"

    # actions (dispatcher)
    @property
    def action_retries(self) -> str:
        """Sorted set of action retry job ids by due time (epoch seconds; leased when claimed)."""
        return f"{self.g}:actions:retries"

    @property
    def action_retry_jobs(self) -> str:
        """Hash retry job id (the idempotency key) -> job JSON."""
        return f"{self.g}:actions:retry-jobs"

    def action_lease(self, idempotency_key: str) -> str:
        """The running executor's token (renewed TTL): one copy at a time, stale records
        fenced (``dispatch/lease.py``)."""
        return f"{self.g}:actions:lease:{idempotency_key}"

    def sending(self, idempotency_key: str) -> str:
        """Hash target -> owner, set just before a notification goes to that target; left
        behind by a send whose outcome is unknown (timed out, interrupted), so it is not sent
        again; deleted when the action's outcome is final (done or given up)."""
        return f"{self.g}:actions:sending:{idempotency_key}"

    def cooldown(self, automation: str, target: str) -> str:
        """Notification cooldown marker of one automation and target (a hash of the URL)."""
        return f"{self.g}:actions:cooldown:{automation}:{target}"

    def cooldown_dropped(self, automation: str, target: str) -> str:
        """Count of notifications dropped by that cooldown since the last one sent."""
        return f"{self.g}:actions:cooldown-dropped:{automation}:{target}"

    # automations store
    @property
    def automations(self) -> str:
        return f"{self.g}:automations"

    @property
    def automation_names(self) -> str:
        return f"{self.g}:automations:names"

    @property
    def automations_log(self) -> str:
        return f"{self.g}:automations:log"

    @property
    def last_fired(self) -> str:
        """Hash automation id -> ISO time of its latest firing (for ``ls``)."""
        return f"{self.g}:automations:last-fired"

    # the events clock (engine, ``engine/ordering.py``; the timer reads it)
    @property
    def events_clock(self) -> str:
        """Hash c (latest event time seen, us) / u (wall time of that, us): lag offset."""
        return f"{self.g}:events-clock"

    # follows ordering (engine, ``engine/ordering.py``)
    def arrived(self, slice_no: int) -> str:
        """Set of the ids of events evaluated during time slice ``slice_no`` (the leaders a
        follower may be waiting for)."""
        return f"{self.g}:ordering:arrived:{slice_no}"

    @property
    def held_events(self) -> str:
        """Hash event id -> JSON of an event waiting for the event it follows."""
        return f"{self.g}:ordering:held"

    @property
    def waitlist(self) -> str:
        """Zset event id -> wall time (us) it was held, for the bounded-wait release."""
        return f"{self.g}:ordering:waitlist"

    def followers(self, leader_id: str) -> str:
        """Set of ids of held events that follow ``leader_id``."""
        return f"{self.g}:ordering:followers:{leader_id}"

    # runtime
    @property
    def deployments(self) -> str:
        return f"{self.g}:deployments"

    @property
    def flow_runs(self) -> str:
        return f"{self.g}:flow-runs"

    def flow_run_lease(self, flow_run_id: str) -> str:
        """String with a TTL, refreshed by the worker running the flow run (crash detection)."""
        return f"{self.g}:flow-runs:lease:{flow_run_id}"

    @property
    def flow_runs_active(self) -> str:
        """Sorted set of flow run ids in a Pending/Running/Cancelling state (score: since)."""
        return f"{self.g}:flow-runs:active"

    @property
    def flow_runs_due(self) -> str:
        """Sorted set of Scheduled flow run ids by start time, not yet on the runs stream."""
        return f"{self.g}:flow-runs:due"

    @property
    def deployment_names(self) -> str:
        """Hash deployment name -> id."""
        return f"{self.g}:deployments:names"

    @property
    def schedule_cursors(self) -> str:
        """Hash ``<deployment id>:<schedule id>`` -> epoch seconds scheduled up to."""
        return f"{self.g}:deployments:cursors"

    @property
    def blocks(self) -> str:
        return f"{self.g}:blocks"

    # Prefect interop (automations/prefect/)
    @property
    def prefect_cursor(self) -> str:
        """The bridge's ``occurred`` watermark (ISO): reconciled up to here."""
        return f"{self.g}:prefect:cursor"

    def prefect_seen(self, event_id: str) -> str:
        """Set (with a TTL) when the bridge published a Prefect event: each id once."""
        return f"{self.g}:prefect:seen:{event_id}"

    @property
    def prefect_writeback(self) -> str:
        """The events-stream entry id the write-back to Prefect has read up to."""
        return f"{self.g}:prefect:writeback"

    @property
    def prefect_taken_over(self) -> str:
        """Hash Prefect automation id -> ISO time the import disabled it on Prefect's side."""
        return f"{self.g}:prefect:taken-over"
