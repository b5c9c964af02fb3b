"""``@flow`` and ``@task``, Prefect 3 style: every state change of a run publishes an event.

A call runs the function in place: Pending -> Running -> Completed | Failed (| Crashed on
interrupts), with ``AwaitingRetry`` -> ``Retrying`` between attempts when ``retries`` allow.
The final state comes from the return value or the exception, which is re-raised unchanged.
Publishing goes through a background ``EventSink`` and never raises into the user's code.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

import anyio

from automations.events import uuid7
from automations.runtime.context import (
    FlowRunContext,
    Session,
    StateReporter,
    TaskRunContext,
    current_flow_run,
    current_task_run,
    parent_task_run_id,
    session_scope,
)
from automations.runtime.states import AWAITING_RETRY, RunResources, State, StateType
from automations.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

RetryDelay = float | Sequence[float]


@dataclass(slots=True)
class Lifecycle:
    """One run's states, in order: each reported state follows the previous one."""

    run: RunResources
    reporter: StateReporter
    previous: State | None = None

    def set(self, kind: StateType, name: str | None = None, message: str = "") -> State:
        state = State.of(kind, name, message)
        self.reporter.report(self.run, state, self.previous)
        self.previous = state
        return state


class _Runnable(Generic[P, R]):
    """What flows and tasks share: options, attempts with retries, sync and async."""

    kind = "flow-run"
    noun = "Flow"

    def __init__(self, fn: Callable[P, R], *, name: str | None, tags: Iterable[str],
                 retries: int, retry_delay_seconds: RetryDelay, description: str | None,
                 settings: Settings | None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.fn = fn
        self.name = name or fn.__name__
        self.tags = tuple(tags)
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.description = description or inspect.getdoc(fn) or ""
        self.settings = settings
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, retries={self.retries})"

    def retry_delay(self, attempt: int) -> float:
        delays = self.retry_delay_seconds
        if isinstance(delays, int | float):
            return float(delays)
        if not delays:
            return 0.0
        return float(delays[min(attempt - 1, len(delays) - 1)])

    def _failure(self, exc: BaseException) -> str:
        return f"{self.noun} run encountered an exception: {type(exc).__name__}: {exc}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        inspect.signature(self.fn).bind(*args, **kwargs)  # wrong arguments fail before any run
        if self.is_async:
            return cast(R, self._acall(args, kwargs))
        with self._running() as life:
            return self.run_attempts(life, args, kwargs)

    async def _acall(self, args: Any, kwargs: Any) -> Any:
        with self._running() as life:
            return await self.arun_attempts(life, args, kwargs)

    @contextmanager
    def _running(self) -> Iterator[Lifecycle]:
        """A publishing session, the run in Pending, and the run as the current context."""
        with session_scope(self.settings) as session:
            run, life = self._start(session)
            reset = self._enter(session, run)
            try:
                yield life
            finally:
                reset()

    def _start(self, session: Session) -> tuple[RunResources, Lifecycle]:
        raise NotImplementedError

    def _enter(self, session: Session, run: RunResources) -> Callable[[], None]:
        """Make ``run`` the current flow or task run; returns what undoes it."""
        raise NotImplementedError

    def run_attempts(self, life: Lifecycle, args: Any, kwargs: Any) -> R:
        for attempt in itertools.count(1):
            life.run.run_count = attempt
            life.set(StateType.RUNNING, "Running" if attempt == 1 else "Retrying")
            try:
                result = self.fn(*args, **kwargs)
            except Exception as exc:
                if attempt <= self.retries:
                    life.set(StateType.SCHEDULED, AWAITING_RETRY, self._failure(exc))
                    time.sleep(self.retry_delay(attempt))
                    continue
                life.set(StateType.FAILED, message=self._failure(exc))
                raise
            except BaseException as exc:
                life.set(StateType.CRASHED, message=f"Execution was interrupted: {exc!r}")
                raise
            life.set(StateType.COMPLETED)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def arun_attempts(self, life: Lifecycle, args: Any, kwargs: Any) -> Any:
        fn = cast(Callable[..., Awaitable[Any]], self.fn)
        for attempt in itertools.count(1):
            life.run.run_count = attempt
            life.set(StateType.RUNNING, "Running" if attempt == 1 else "Retrying")
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if attempt <= self.retries:
                    life.set(StateType.SCHEDULED, AWAITING_RETRY, self._failure(exc))
                    await anyio.sleep(self.retry_delay(attempt))
                    continue
                life.set(StateType.FAILED, message=self._failure(exc))
                raise
            except BaseException as exc:
                life.set(StateType.CRASHED, message=f"Execution was interrupted: {exc!r}")
                raise
            life.set(StateType.COMPLETED)
            return result
        raise AssertionError("unreachable")  # pragma: no cover


class Flow(_Runnable[P, R]):
    """A decorated flow function; calling it runs it as a flow run."""

    def _enter(self, session: Session, run: RunResources) -> Callable[[], None]:
        token = current_flow_run.set(FlowRunContext(session, run))
        return functools.partial(current_flow_run.reset, token)

    def _start(self, session: Session) -> tuple[RunResources, Lifecycle]:
        parent = current_flow_run.get()
        run_id = uuid7()
        tags = set(self.tags)
        parent_task = None
        if parent is not None:  # a subflow: related to a task run standing for it in the parent
            tags |= set(parent.run.tags)
            parent_task = parent_task_run_id() or uuid7()
        run = RunResources("flow-run", run_id, f"{self.name}-{run_id.hex[-8:]}", self.name,
                           tags=sorted(tags), parent_task_run=parent_task)
        life = Lifecycle(run, session.reporter)
        life.set(StateType.PENDING)
        return run, life


class Task(_Runnable[P, R]):
    """A decorated task function; calling it (inside a flow or not) runs it as a task run."""

    kind = "task-run"
    noun = "Task"

    def _enter(self, session: Session, run: RunResources) -> Callable[[], None]:
        token = current_task_run.set(TaskRunContext(session, run))
        return functools.partial(current_task_run.reset, token)

    def _start(self, session: Session) -> tuple[RunResources, Lifecycle]:
        flow_ctx = current_flow_run.get()
        run_id = uuid7()
        tags = set(self.tags)
        if flow_ctx is not None:
            tags |= set(flow_ctx.run.tags)
            number = next(flow_ctx.task_numbers)
            flow_run = {"id": str(flow_ctx.run.id), "name": flow_ctx.run.name}
            run = RunResources("task-run", run_id, f"{self.name}-{number}", flow_ctx.run.flow_name,
                               tags=sorted(tags), deployment=flow_ctx.run.deployment,
                               flow_run=flow_run)
        else:
            run = RunResources("task-run", run_id, f"{self.name}-{run_id.hex[-8:]}", self.name,
                               tags=sorted(tags))
        life = Lifecycle(run, session.reporter)
        life.set(StateType.PENDING)
        return run, life


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(
    *, name: str | None = None, tags: Iterable[str] = (), retries: int = 0,
    retry_delay_seconds: RetryDelay = 0, description: str | None = None,
    settings: Settings | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...
def flow(
    fn: Callable[P, R] | None = None, /, *, name: str | None = None, tags: Iterable[str] = (),
    retries: int = 0, retry_delay_seconds: RetryDelay = 0, description: str | None = None,
    settings: Settings | None = None,
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a flow: ``@flow`` or ``@flow(name=..., retries=..., tags=[...])``."""

    def wrap(f: Callable[P, R]) -> Flow[P, R]:
        return Flow(f, name=name, tags=tags, retries=retries,
                    retry_delay_seconds=retry_delay_seconds, description=description,
                    settings=settings)

    return wrap(fn) if fn is not None else wrap


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *, name: str | None = None, tags: Iterable[str] = (), retries: int = 0,
    retry_delay_seconds: RetryDelay = 0, description: str | None = None,
    settings: Settings | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(
    fn: Callable[P, R] | None = None, /, *, name: str | None = None, tags: Iterable[str] = (),
    retries: int = 0, retry_delay_seconds: RetryDelay = 0, description: str | None = None,
    settings: Settings | None = None,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task: ``@task`` or ``@task(name=..., retries=..., tags=[...])``."""

    def wrap(f: Callable[P, R]) -> Task[P, R]:
        return Task(f, name=name, tags=tags, retries=retries,
                    retry_delay_seconds=retry_delay_seconds, description=description,
                    settings=settings)

    return wrap(fn) if fn is not None else wrap
