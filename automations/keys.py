"""Every Redis key, stream and group name, built from one prefix (DESIGN.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_GROUP = "engine"
DISPATCH_GROUP = "dispatch"
ANNOUNCE_GROUP = "announce"  # engines, on the firings stream (automations/engine/outbox.py)
WORKERS_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "automations"

    # streams
    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def firings(self) -> str:
        return f"{self.prefix}:firings"

    @property
    def runs(self) -> str:
        return f"{self.prefix}:runs"

    @property
    def decisions(self) -> str:
        """The engine's decision log (``engine/decisions.py``): what each event counted for."""
        return f"{self.prefix}:decisions"

    @property
    def history(self) -> str:
        """What the dispatcher did with each firing: one entry when it takes a firing, one per
        action outcome (``automations.insight.history``)."""
        return f"{self.prefix}:history"

    def dead(self, stream: str) -> str:
        """Dead-letter stream of ``stream`` (a full stream key or a short name)."""
        short = stream.removeprefix(f"{self.prefix}:")
        return f"{self.prefix}:dead:{short}"

    # markers
    def seen(self, event_id: str) -> str:
        return f"{self.prefix}:seen:{event_id}"

    def done(self, idempotency_key: str) -> str:
        return f"{self.prefix}:done:{idempotency_key}"

    # actions (dispatcher)
    @property
    def action_retries(self) -> str:
        """Sorted set of action retry job ids by due time (epoch seconds; leased when claimed)."""
        return f"{self.prefix}:actions:retries"

    @property
    def action_retry_jobs(self) -> str:
        """Hash retry job id (the idempotency key) -> job JSON."""
        return f"{self.prefix}:actions:retry-jobs"

    def action_lease(self, idempotency_key: str) -> str:
        """The running executor's token (renewed TTL): one copy at a time, stale records
        fenced (``dispatch/lease.py``)."""
        return f"{self.prefix}:actions:lease:{idempotency_key}"

    def sending(self, idempotency_key: str) -> str:
        """Hash target -> owner, set just before a notification goes to that target; left
        behind by a send whose outcome is unknown (timed out, interrupted), so it is not sent
        again; deleted when the action's outcome is final (done or given up)."""
        return f"{self.prefix}:actions:sending:{idempotency_key}"

    def cooldown(self, automation: str, target: str) -> str:
        """Notification cooldown marker of one automation and target (a hash of the URL)."""
        return f"{self.prefix}:actions:cooldown:{automation}:{target}"

    def cooldown_dropped(self, automation: str, target: str) -> str:
        """Count of notifications dropped by that cooldown since the last one sent."""
        return f"{self.prefix}:actions:cooldown-dropped:{automation}:{target}"

    # automations store
    @property
    def automations(self) -> str:
        return f"{self.prefix}:automations"

    @property
    def automation_names(self) -> str:
        return f"{self.prefix}:automations:names"

    @property
    def automations_log(self) -> str:
        return f"{self.prefix}:automations:log"

    @property
    def last_fired(self) -> str:
        """Hash automation id -> ISO time of its latest firing (for ``ls``)."""
        return f"{self.prefix}:automations:last-fired"

    # trigger state
    def bucket(self, automation: str, trigger: str, key: str) -> str:
        return f"{self.prefix}:bucket:{automation}:{trigger}:{key}"

    @property
    def deadlines(self) -> str:
        return f"{self.prefix}:deadlines"

    def composite(self, automation: str, trigger: str) -> str:
        return f"{self.prefix}:composite:{automation}:{trigger}"

    def held_expect(self, automation: str, trigger: str, key: str) -> str:
        """Zset of expect events that arrived before any window of their bucket (engine)."""
        return f"{self.prefix}:held-expect:{automation}:{trigger}:{key}"

    def unresolved(self, automation: str, trigger: str, key: str) -> str:
        """Expected events still needed to resolve a proactive firing of this bucket (engine)."""
        return f"{self.prefix}:unresolved:{automation}:{trigger}:{key}"

    @property
    def proactive_globals(self) -> str:
        """Hash trigger id -> spec of Proactive triggers with one global window (engine)."""
        return f"{self.prefix}:proactive-globals"

    @property
    def trigger_specs(self) -> str:
        """Hash trigger id -> the window spec the proactive timer evaluates with (engine)."""
        return f"{self.prefix}:trigger-specs"

    @property
    def events_clock(self) -> str:
        """Hash c (latest event time seen, us) / u (wall time of that, us): lag offset."""
        return f"{self.prefix}:events-clock"

    # follows ordering (engine)
    @property
    def held_events(self) -> str:
        """Hash event id -> JSON of an event waiting for the event it follows."""
        return f"{self.prefix}:ordering:held"

    @property
    def waitlist(self) -> str:
        """Zset event id -> wall time (us) it was held, for the bounded-wait release."""
        return f"{self.prefix}:ordering:waitlist"

    def followers(self, leader_id: str) -> str:
        """Set of ids of held events that follow ``leader_id``."""
        return f"{self.prefix}:ordering:followers:{leader_id}"

    # runtime
    @property
    def deployments(self) -> str:
        return f"{self.prefix}:deployments"

    @property
    def flow_runs(self) -> str:
        return f"{self.prefix}:flow-runs"

    def flow_run_lease(self, flow_run_id: str) -> str:
        """String with a TTL, refreshed by the worker running the flow run (crash detection)."""
        return f"{self.prefix}:flow-runs:lease:{flow_run_id}"

    @property
    def flow_runs_active(self) -> str:
        """Sorted set of flow run ids in a Pending/Running/Cancelling state (score: since)."""
        return f"{self.prefix}:flow-runs:active"

    @property
    def flow_runs_due(self) -> str:
        """Sorted set of Scheduled flow run ids by start time, not yet on the runs stream."""
        return f"{self.prefix}:flow-runs:due"

    @property
    def deployment_names(self) -> str:
        """Hash deployment name -> id."""
        return f"{self.prefix}:deployments:names"

    @property
    def schedule_cursors(self) -> str:
        """Hash ``<deployment id>:<schedule id>`` -> epoch seconds scheduled up to."""
        return f"{self.prefix}:deployments:cursors"

    @property
    def blocks(self) -> str:
        return f"{self.prefix}:blocks"

    # Prefect interop (automations/prefect/)
    @property
    def prefect_cursor(self) -> str:
        """The bridge's ``occurred`` watermark (ISO): reconciled up to here."""
        return f"{self.prefix}:prefect:cursor"

    def prefect_seen(self, event_id: str) -> str:
        """Set (with a TTL) when the bridge published a Prefect event: each id once."""
        return f"{self.prefix}:prefect:seen:{event_id}"

    @property
    def prefect_writeback(self) -> str:
        """The events-stream entry id the write-back to Prefect has read up to."""
        return f"{self.prefix}:prefect:writeback"

    @property
    def prefect_taken_over(self) -> str:
        """Hash Prefect automation id -> ISO time the import disabled it on Prefect's side."""
        return f"{self.prefix}:prefect:taken-over"
