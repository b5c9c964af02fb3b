"""What an executor gets: a typed ``ActionContext`` and Protocol-typed ports.

``actions`` never imports ``automations.models``, the store, the engine or the runtime
(DESIGN.md section 2): the automation is a read-only Protocol view, and everything an executor
reads or changes goes through a port: ``Ports`` (wired by ``automations.service.build_ports``)
and the ``LedgerPort`` (the dispatcher's ledger). An executor never touches Redis itself, so
the key layout and its expiries stay in one place. Ports use positional-only parameters so any
implementation's parameter names fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import aiohttp

from actions.models import Action
from actions.secrets import Redactor
from actions.templating import Templates
from automations.dispatch.notifiers import NotifierPool
from automations.events import Event
from triggers.firing import Firing
from triggers.models import Trigger


class AutomationView(Protocol):
    """The fields of an ``Automation`` actions read (``automations.models.Automation`` fits)."""

    @property
    def id(self) -> UUID: ...
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def tags(self) -> Sequence[str]: ...
    @property
    def trigger(self) -> Trigger: ...
    @property
    def actions(self) -> Sequence[Action]: ...
    @property
    def actions_on_trigger(self) -> Sequence[Action]: ...
    @property
    def actions_on_resolve(self) -> Sequence[Action]: ...


class AutomationsPort(Protocol):
    """Reads automations and pauses/resumes them (pause-/resume-automation).

    ``automations.store.AutomationStore`` fits. ``get`` answers None for a missing automation
    and ``set_enabled`` raises ``automations.errors.NotFound`` (the executor reports
    ``Reason.NOT_FOUND``); for one stored but no longer valid both raise an ``AutomationsError``
    (``automations.store.InvalidStoredAutomation``; ``Reason.VALIDATION``).
    """

    async def get(self, automation_id: UUID, /) -> AutomationView | None: ...
    async def by_name(self, name: str, /) -> AutomationView:
        """The automation called ``name``; raises ``NotFound`` when there is none."""
        ...

    async def set_enabled(self, automation_id: UUID, enabled: bool, /) -> object: ...


class DeploymentsPort(Protocol):
    """Deployments, for run-/pause-/resume-deployment (implemented by the runtime).

    Records are plain mappings (``id``, ``name``, ``flow_name``, ``paused``, ...) so ``actions``
    stays independent of the runtime's models; templates see them as ``deployment``/``flow``.
    ``automations.runtime.ports.DeploymentsAdapter`` implements it.
    """

    async def get(self, deployment_id: UUID, /) -> Mapping[str, Any] | None:
        """The deployment, or None when it does not exist."""
        ...

    async def by_name(self, name: str, /) -> Mapping[str, Any] | None:
        """The deployment with that name, or None."""
        ...

    async def create_flow_run(
        self,
        deployment_id: UUID,
        parameters: Mapping[str, Any] | None,
        job_variables: Mapping[str, Any] | None,
        scheduled_start: datetime,
        idempotency_key: str,
        creator: Mapping[str, str] | None = None,
        /,
    ) -> Mapping[str, Any]:
        """Create (at most once per ``idempotency_key``) a flow run; returns it (with ``id``).
        ``creator`` (``{"kind": "automation", "id", "name"}``) becomes the run's ``creator``
        related resource, so loops can be spotted."""
        ...

    async def set_paused(self, deployment_id: UUID, paused: bool, /) -> object:
        """Pause or resume the deployment's schedules; raises NotFound if it is unknown."""
        ...


class FlowRunsPort(Protocol):
    """Flow runs, for cancel-flow-run / change-flow-run-state (implemented by the runtime)."""

    async def get(self, flow_run_id: UUID, /) -> Mapping[str, Any] | None:
        """The flow run (``id``, ``name``, ``state``, ``deployment_id``, ...), or None."""
        ...

    async def set_state(
        self,
        flow_run_id: UUID,
        state: str,
        name: str | None,
        message: str | None,
        force: bool,
        /,
    ) -> Mapping[str, Any]:
        """Propose a state; returns the resulting run. A refused transition raises
        ``actions.outcome.PermanentError(Reason.VALIDATION, ...)``."""
        ...


class BlocksPort(Protocol):
    """Named secrets (Apprise URLs, webhook URLs); ``actions.secrets.BlockStore`` fits."""

    async def get(self, name: str, /) -> str | None: ...


class LedgerPort(Protocol):
    """State an executor keeps between attempts and firings: per-target delivered records
    (keys extend the action's idempotency key, e.g. ``<key>:t0``) and per-target cooldowns.
    ``automations.dispatch.ledger.Ledger`` implements it on Redis, shared by every dispatcher.
    """

    async def delivered(self, keys: Sequence[str], /) -> list[bool]:
        """For each key: whether it was marked delivered (and has not expired)."""
        ...

    async def mark_delivered(self, key: str, /) -> None:
        """Remember ``key`` as delivered (for as long as the action's own done record)."""
        ...

    async def claim_cooldown(
        self, automation_id: UUID, target: str, owner: str, ttl_s: float, /
    ) -> int | None:
        """Claim the cooldown of one automation and target for ``ttl_s`` on behalf of
        ``owner`` (an idempotency key; a claim ``owner`` already holds counts as granted).
        None: another owner holds it, so this notification is dropped and counted; else how
        many were dropped since the last one sent."""
        ...

    async def release_cooldown(self, automation_id: UUID, target: str, owner: str, /) -> None:
        """Drop the claim if ``owner`` still holds it: a failed delivery must not use up the
        cooldown (and must not drop a claim another notification took since)."""
        ...

    async def claim_send(self, key: str, target: str, owner: str, force: bool, /) -> bool:
        """Mark the send of action ``key`` to ``target`` as started, just before it goes out.
        False when an earlier send of it never concluded (it timed out or was interrupted: it
        may have been delivered), unless ``force`` (then the mark is taken over). The marks
        go when the action's outcome is final (done or given up)."""
        ...

    async def release_send(self, key: str, target: str, owner: str, /) -> None:
        """Remove ``owner``'s mark after a definite failure: the next attempt may send."""
        ...


@dataclass(slots=True)
class Ports:
    """The stores an executor acts on. ``deployments``/``flow_runs`` are None until the
    runtime is wired; their executors then fail with ``Reason.UNSUPPORTED``."""

    automations: AutomationsPort
    blocks: BlocksPort
    deployments: DeploymentsPort | None = None
    flow_runs: FlowRunsPort | None = None


@dataclass(slots=True)
class Clients:
    """Long-lived clients owned (opened and closed) by the dispatcher, shared by executors:
    one pooled HTTP session and one Apprise object per target URL (plugin loading is slow).

    aiohttp rather than httpx: measured here, 32 concurrent keep-alive requests to one local
    server ran at ~2,600/s with aiohttp and ~270/s with httpx 0.28 (its pool is the cost)."""

    http: aiohttp.ClientSession
    notifiers: NotifierPool


@dataclass(slots=True)
class ActionResult:
    """What a successful action reports: ``details`` go into the ``.executed`` payload,
    ``related`` (resources with a ``prefect.resource.role``) into its related list."""

    details: dict[str, Any] = field(default_factory=dict)
    related: list[dict[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class ActionContext:
    """One invocation of one action for one firing (reference 3.13)."""

    firing: Firing
    automation: AutomationView
    action: Action
    action_index: int
    idempotency_key: str
    """``<firing id>:<action index>``; the effect is carried out at most once per key."""
    triggering_event: Event | None
    """The firing's event for ``actions``; the automation.triggered/resolved event for
    ``actions_on_trigger`` / ``actions_on_resolve`` (rebuilt from the firing)."""
    labels: dict[str, str]
    now: datetime
    ports: Ports
    ledger: LedgerPort
    """Per-target delivered records and cooldowns (send-notification)."""
    clients: Clients
    redactor: Redactor
    """Secrets resolved for this action are registered here and scrubbed from every output."""
    templates: Templates
    """Renders this action's templates (the dispatcher has already rendered notify/webhook
    fields; other executors render their own, e.g. run-deployment parameters)."""
    action_timeout_s: float
    """The dispatcher's per-action timeout: the default of each request's own timeout."""
    attempt: int = 1
