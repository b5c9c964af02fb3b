"""Child process: one engine on a prefix, driven by ``bench.procs``. Uses only the public
``Engine`` API: ``load``, then ``run`` until SIGTERM.

``python -m bench.run_engine --redis-url URL --prefix P --automations FILE [--consumer NAME]``
"""

from __future__ import annotations

import time

import anyio

from automations.connection import connect
from automations.engine.engine import Engine
from automations.keys import Keys
from automations.layout import ensure_layout
from automations.models import Automation
from automations.service import settle_loaded_objects
from bench.procs import (
    child_arguments,
    child_settings,
    own_rss,
    read_json,
    say,
    wait_for_go,
    wait_for_signal,
)


async def main() -> None:
    args = child_arguments("bench.run_engine", "bench-engine", automations=True).parse_args()
    settings = child_settings(args)
    keys = Keys.from_settings(settings)
    redis = connect(settings)
    await ensure_layout(redis, keys)  # as a service's start does
    rss_before = own_rss()
    automations = [Automation.model_validate(a) for a in read_json(args.automations)]
    started = time.perf_counter()
    engine = Engine(redis, settings, keys=keys)
    await engine.load(automations)
    settle_loaded_objects()
    say(ready=True, load_seconds=round(time.perf_counter() - started, 3),
        rss_before_load=rss_before, rss=own_rss(), automations=len(automations))
    await wait_for_go()
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        await wait_for_signal()
        engine.stop()
    say(stopped=True, rss=own_rss())
    await redis.aclose()


if __name__ == "__main__":
    anyio.run(main)
