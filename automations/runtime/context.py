"""The run context of the current flow or task run, carried in context variables.

The outermost run of a process opens an ``EventSink`` and every nested run reuses it; a
worker-launched flow run reports its own states to the worker instead (``StateReporter``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from automations.runtime.sink import EventSink
from automations.runtime.states import RunResources, State, state_event
from automations.settings import Settings


class StateReporter(Protocol):
    """Announces a run's state change (an event, or a message to the worker)."""

    def report(self, run: RunResources, state: State, previous: State | None) -> None: ...


@dataclass(slots=True)
class SinkReporter:
    sink: EventSink

    def report(self, run: RunResources, state: State, previous: State | None) -> None:
        self.sink.put(state_event(run, state, previous))


@dataclass(slots=True)
class Session:
    """Shared by every run of one outermost call: settings and where events go."""

    settings: Settings
    sink: EventSink
    owns_sink: bool = True

    @property
    def reporter(self) -> SinkReporter:
        return SinkReporter(self.sink)


@dataclass(slots=True)
class FlowRunContext:
    session: Session
    run: RunResources
    task_numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@dataclass(slots=True)
class TaskRunContext:
    session: Session
    run: RunResources


current_flow_run: ContextVar[FlowRunContext | None] = ContextVar("flow_run", default=None)
current_task_run: ContextVar[TaskRunContext | None] = ContextVar("task_run", default=None)


def current_session() -> Session | None:
    flow_ctx, task_ctx = current_flow_run.get(), current_task_run.get()
    if task_ctx is not None:
        return task_ctx.session
    return flow_ctx.session if flow_ctx is not None else None


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """The current session, or a new one (with its own sink, closed on exit)."""
    found = current_session()
    if found is not None:
        yield found
        return
    settings = settings or Settings()
    session = Session(settings, EventSink(settings))
    try:
        yield session
    finally:
        session.sink.close()


def parent_task_run_id() -> UUID | None:
    task_ctx = current_task_run.get()
    return task_ctx.run.id if task_ctx is not None else None
