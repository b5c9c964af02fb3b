"""The process a worker starts for one flow run: ``python -m automations.runtime.launch``.

Reads the run from ``AUTOMATIONS_FLOW_RUN`` (JSON), loads its entrypoint, checks the
parameters, and runs it as that flow run. The run's own states go to the worker over the pipe
``AUTOMATIONS_STATE_FD`` (the worker records and announces them); task runs and subflows publish
their events directly. Exit code 0 when the run completed, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
from typing import IO

import orjson

from automations.runtime.context import FlowRunContext, Session, current_flow_run
from automations.runtime.entrypoints import as_flow, check_parameters, load_entrypoint
from automations.runtime.flow_runs import FlowRun
from automations.runtime.flows import Lifecycle
from automations.runtime.sink import EventSink
from automations.runtime.states import RunResources, State, StateType
from automations.settings import Settings

RUN_ENV = "AUTOMATIONS_FLOW_RUN"
FD_ENV = "AUTOMATIONS_STATE_FD"


class PipeReporter:
    """Writes each state of the managed run as one JSON line to the worker; a worker that is
    gone must not break the flow, so write errors are ignored."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe = pipe

    def report(self, run: RunResources, state: State, previous: State | None) -> None:
        line = orjson.dumps({"state": state.to_dict(), "run_count": run.run_count})
        try:
            self.pipe.write(line + b"\n")
            self.pipe.flush()
        except OSError:
            pass


def execute(run: FlowRun, reporter: PipeReporter, settings: Settings) -> int:
    resources = run.resources()
    life = Lifecycle(resources, reporter, previous=run.state)
    try:
        flow = as_flow(load_entrypoint(run.entrypoint, run.working_dir))
        params = check_parameters(flow, run.parameters, complete=True)
    except Exception as exc:
        life.set(StateType.FAILED, message=f"Flow could not be started: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    session = Session(settings, EventSink(settings))
    token = current_flow_run.set(FlowRunContext(session, resources))
    try:
        if flow.is_async:
            asyncio.run(flow.arun_attempts(life, (), params))
        else:
            flow.run_attempts(life, (), params)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        current_flow_run.reset(token)
        session.sink.close()
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = FlowRun.model_validate_json(os.environ[RUN_ENV])
    with os.fdopen(int(os.environ[FD_ENV]), "wb", buffering=0) as pipe:
        return execute(run, PipeReporter(pipe), Settings())


if __name__ == "__main__":
    sys.exit(main())
