"""Child process: the proactive timer service on a prefix, driven by ``bench.procs``.

``python -m bench.run_timer --redis-url URL --prefix P``: runs ``run_timer``, which
needs no automations (the engines publish the trigger specs in Redis).
"""

from __future__ import annotations

import anyio

from automations.connection import connect
from automations.keys import Keys
from automations.service import ServiceContext, run_timer
from bench.procs import child_arguments, child_settings, own_rss, say, serve_until_signal


async def main() -> None:
    args = child_arguments("bench.run_timer", "bench-timer", automations=False).parse_args()
    settings = child_settings(args)
    keys = Keys.from_settings(settings)
    redis = connect(settings)
    say(ready=True, rss=own_rss())
    context = ServiceContext(settings, redis, keys, anyio.Event())
    await serve_until_signal(run_timer, context)
    await redis.aclose()


if __name__ == "__main__":
    anyio.run(main)
