"""Child process: the action dispatcher service on a prefix, driven by ``bench.procs``.

``python -m bench.run_dispatcher --redis-url URL --prefix P --automations FILE``: applies the
automations to the store (the dispatcher reads them there), then runs the service.
"""

from __future__ import annotations

import anyio

from automations.connection import connect
from automations.keys import Keys
from automations.models import Automation
from automations.service import ServiceContext, run_dispatcher
from automations.store import AutomationStore
from bench.procs import (
    child_arguments,
    child_settings,
    own_rss,
    read_json,
    say,
    serve_until_signal,
)


async def main() -> None:
    parser = child_arguments("bench.run_dispatcher", "bench-dispatcher", automations=True)
    args = parser.parse_args()
    settings = child_settings(args)
    keys = Keys.from_settings(settings)
    redis = connect(settings)
    automations = [Automation.model_validate(a) for a in read_json(args.automations)]
    await AutomationStore(redis, keys).apply(automations)
    say(ready=True, rss=own_rss(), automations=len(automations))
    await serve_until_signal(
        run_dispatcher, ServiceContext(settings, redis, keys, anyio.Event())
    )
    await redis.aclose()


if __name__ == "__main__":
    anyio.run(main)
