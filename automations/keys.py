"""Every Redis key, stream and group name, built from one prefix (DESIGN.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_GROUP = "engine"
DISPATCH_GROUP = "dispatch"
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

    def dead(self, stream: str) -> str:
        """Dead-letter stream of ``stream`` (a full stream key or a short name)."""
        short = stream.removeprefix(f"{self.prefix}:")
        return f"{self.prefix}:dead:{short}"

    # markers
    def seen(self, event_id: str) -> str:
        return f"{self.prefix}:seen:{event_id}"

    def done(self, idempotency_key: str) -> str:
        return f"{self.prefix}:done:{idempotency_key}"

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

    # runtime
    @property
    def deployments(self) -> str:
        return f"{self.prefix}:deployments"

    @property
    def flow_runs(self) -> str:
        return f"{self.prefix}:flow-runs"

    @property
    def blocks(self) -> str:
        return f"{self.prefix}:blocks"
