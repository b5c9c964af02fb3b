"""The worker: consumes the runs stream and runs each flow run in its own process.

Per run: claim it (Scheduled -> Pending, with a lease, atomically; another worker or a
redelivery finds it taken), start ``python -m automations.runtime.launch``, record the states
the process reports over a pipe (Running, Retrying, Completed/Failed), and record Crashed if it
exits without a final state. A housekeeping loop renews the leases, stops processes whose run
was cancelled or changed from outside (SIGTERM, then SIGKILL after a grace period), queues due
runs and marks runs of dead workers Crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from uuid import UUID

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.abc import Process, TaskGroup

from automations.backoff import Backoff, retry
from automations.connection import CONNECTION_ERRORS, redis_url
from automations.errors import NotFound
from automations.events import utcnow
from automations.keys import WORKERS_GROUP, Keys
from automations.runtime.flow_runs import FlowRun, FlowRunStore
from automations.runtime.launch import FD_ENV, RUN_ENV
from automations.runtime.states import State, StateType, holds_worker
from automations.settings import Settings
from automations.streams.consumer import StreamConsumer
from automations.streams.entries import Entry, Reject

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Running:
    run_id: str
    state_id: UUID
    """The state this worker last recorded; anything else means someone changed the run."""
    process: Process | None = None
    stopping: bool = False


class Worker:
    def __init__(self, redis: aioredis.Redis, settings: Settings, *, concurrency: int = 4,
                 keys: Keys | None = None, python: str = sys.executable) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys.from_settings(settings)
        self.name = settings.consumer_name
        self.concurrency = concurrency
        self.python = python
        self.store = FlowRunStore(redis, settings, self.keys)
        self.lease_ms = int(settings.worker_lease_s * 1000)
        self.running: dict[str, _Running] = {}
        self.started = 0
        self.finished = 0
        self._slots = anyio.Semaphore(concurrency)
        self._tg: TaskGroup | None = None
        self.consumer = StreamConsumer(
            redis, settings, stream=self.keys.runs, group=WORKERS_GROUP, handler=self._handle,
            dead_stream=self.keys.dead(self.keys.runs), consumer=self.name, batch_size=1,
            maxlen=settings.events_maxlen,
        )

    def __repr__(self) -> str:
        return (f"Worker({self.name!r}, running={len(self.running)}, started={self.started}, "
                f"finished={self.finished})")

    def stop(self) -> None:
        """Stop taking runs; ``run()`` returns once the runs in hand are done."""
        self.consumer.stop()

    async def run(self) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._housekeeping)
            async with anyio.create_task_group() as runs:
                self._tg = runs
                await self.consumer.run()
            outer.cancel_scope.cancel()

    async def run_until_idle(self) -> int:
        """Take every queued run and wait for all of them to finish (tests)."""
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._housekeeping)
            async with anyio.create_task_group() as runs:
                self._tg = runs
                taken = await self.consumer.run_until_idle()
            outer.cancel_scope.cancel()
        return taken

    async def kill_all(self) -> None:
        """Stop every process in hand at once (shutdown timeout)."""
        for running in list(self.running.values()):
            self._signal(running, signal.SIGKILL)

    # -- taking runs -------------------------------------------------------------------
    async def _handle(self, entries: list[Entry]) -> Sequence[Reject]:
        rejects = []
        for entry in entries:
            raw = entry.fields.get(b"id")
            if raw is None:
                rejects.append(Reject(entry, "runs entry without an 'id' field"))
                continue
            try:
                run_id = raw.decode()
            except UnicodeDecodeError:  # raising would fail (and redeliver) the whole batch
                rejects.append(Reject(entry, f"runs entry 'id' is not UTF-8: {raw[:100]!r}"))
                continue
            await self._slots.acquire()
            try:
                run = await self._claim(run_id)
            except NotFound:
                self._slots.release()
                rejects.append(Reject(entry, f"no flow run with id {run_id}"))
                continue
            except BaseException:
                self._slots.release()
                raise
            if run is None:
                self._slots.release()
                continue
            assert self._tg is not None
            self.running[str(run.id)] = _Running(str(run.id), run.state.id)
            self._tg.start_soon(self._execute, run)
        return rejects

    async def _claim(self, run_id: str) -> FlowRun | None:
        """Scheduled -> Pending for this worker; None when it is not ours to run (anymore)."""
        now = utcnow()

        def decide(run: FlowRun) -> State | None:
            if run.state.type != StateType.SCHEDULED:
                return None
            return State.of(StateType.PENDING, None, f"Picked up by worker {self.name}")

        current = await self.store.get(run_id)
        if current is None:
            raise NotFound(run_id)
        if current.state.type == StateType.SCHEDULED and current.expected_start > now:
            await self.redis.zadd(self.keys.flow_runs_due,
                                  {run_id: current.expected_start.timestamp()})
            return None
        return await self.store.transition(run_id, decide, lease_ms=self.lease_ms,
                                           update=lambda r: {"worker": self.name})

    # -- running one ------------------------------------------------------------------
    async def _execute(self, run: FlowRun) -> None:
        run_id = str(run.id)
        self.started += 1
        log.info("flow run %s (%s): starting %s", run.name, run_id, run.entrypoint)
        try:
            code = await self._spawn_and_follow(run)
            await self._finish(run_id, code)
            final = await self.store.get(run_id)
            log.info("flow run %s: %s", run.name, final.state.name if final else "deleted")
        except Exception:
            log.exception("flow run %s: worker error", run_id)
            with contextlib.suppress(Exception):
                await self._finish(run_id, None)
        finally:
            self.running.pop(run_id, None)
            self._slots.release()
            self.finished += 1

    async def _spawn_and_follow(self, run: FlowRun) -> int | None:
        read_fd, write_fd = os.pipe()
        extra = run.job_variables.get("env")
        env = {**os.environ, **({str(k): str(v) for k, v in extra.items()}
                                if isinstance(extra, dict) else {}),
               RUN_ENV: run.model_dump_json(), FD_ENV: str(write_fd),
               "AUTOMATIONS_REDIS_URL": redis_url(self.settings),
               "AUTOMATIONS_REDIS_CLUSTER": str(self.settings.redis_cluster).lower(),
               "AUTOMATIONS_PREFIX": self.settings.prefix}
        cwd = run.working_dir if run.working_dir and os.path.isdir(run.working_dir) else None
        try:
            process = await anyio.open_process(
                # -P: the run's directory must not shadow our packages (an `automations.py`)
                [self.python, "-P", "-m", "automations.runtime.launch"], env=env, cwd=cwd,
                stdin=None, stdout=None, stderr=None, pass_fds=(write_fd,),
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        running = self.running[str(run.id)]
        running.process = process
        if running.stopping:
            self._signal(running, signal.SIGTERM)
        try:
            await self._follow(run, read_fd)
        finally:
            with anyio.CancelScope(shield=True):
                code = await process.wait()
        return code

    async def _follow(self, run: FlowRun, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                try:
                    msg = orjson.loads(line)
                    state = State.from_dict(msg["state"])
                except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
                    log.warning("flow run %s: unreadable state report %r", run.id, line[:200])
                    continue
                await self._record(str(run.id), state, int(msg.get("run_count") or 1))
        finally:
            transport.close()

    async def _record(self, run_id: str, state: State, run_count: int) -> None:
        running = self.running[run_id]

        def decide(run: FlowRun) -> State | None:
            return state if run.state.id == running.state_id else None

        lease = self.lease_ms if holds_worker(state) else 0
        # Redis away for a moment must not lose the run's final state (tried for a lease's time).
        new = await retry(
            partial(self.store.transition, run_id, decide, lease_ms=lease,
                    update=lambda r: {"run_count": run_count}),
            Backoff(f"flow run {run_id}: recording {state.name}", first_s=0.1,
                    cap_s=self.settings.reconnect_max_s, logger=log),
            deadline_s=self.settings.worker_lease_s)
        if new is not None:
            running.state_id = new.state.id

    async def _finish(self, run_id: str, code: int | None) -> None:
        """After the process exit: Cancelled if asked to cancel; Crashed if it stopped without
        a final state; nothing if the run already has one (or was changed from outside)."""
        last = self.running[run_id].state_id

        def decide(run: FlowRun) -> State | None:
            if run.state.type == StateType.CANCELLING:
                return State.of(StateType.CANCELLED, None, run.state.message or "Cancelled")
            if run.state.id != last or not holds_worker(run.state):
                return None
            how = "was killed" if code is not None and code < 0 else f"exited with code {code}"
            return State.of(StateType.CRASHED, None, f"Flow run process {how}")

        await self.store.transition(run_id, decide)

    # -- housekeeping -----------------------------------------------------------------
    async def _housekeeping(self) -> None:
        redis_backoff = Backoff("worker housekeeping", cap_s=self.settings.reconnect_max_s,
                                logger=log)
        while True:
            try:
                await self._heartbeat()
                await self.store.promote_due(utcnow())
                for run in await self.store.sweep_crashed():
                    log.warning("flow run %s (%s) is %s", run.name, run.id, run.state.name)
            except CONNECTION_ERRORS as exc:
                await redis_backoff.wait(exc)
                continue
            redis_backoff.recovered()
            await anyio.sleep(self.settings.worker_poll_s)

    async def _heartbeat(self) -> None:
        """Renew leases; stop processes whose run is no longer in the state we recorded."""
        held = list(self.running.values())
        if not held:
            return
        pipe = self.redis.pipeline(transaction=False)
        for running in held:
            pipe.set(self.keys.flow_run_lease(running.run_id), self.name,
                     px=self.lease_ms, xx=True)
            pipe.hget(self.keys.flow_runs, running.run_id)
        replies = await pipe.execute()
        for running, raw in zip(held, replies[1::2], strict=True):
            if running.stopping or raw is None:
                continue
            current = FlowRun.model_validate_json(raw)
            if current.state.id != running.state_id:
                log.info("flow run %s is now %s: stopping its process", running.run_id,
                         current.state.name)
                running.stopping = True
                self._signal(running, signal.SIGTERM)
                assert self._tg is not None
                self._tg.start_soon(self._kill_later, running)

    async def _kill_later(self, running: _Running) -> None:
        await anyio.sleep(self.settings.worker_cancel_grace_s)
        if running.run_id in self.running:
            self._signal(running, signal.SIGKILL)

    @staticmethod
    def _signal(running: _Running, signum: signal.Signals) -> None:
        process = running.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
