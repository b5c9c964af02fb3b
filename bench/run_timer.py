"""Child process: the proactive timer service on a prefix, driven by ``bench.procs``.

``python -m bench.run_timer --redis-url URL --prefix P``: runs ``run_timer_service``, which
needs no automations (the engines publish the trigger specs in Redis).
"""

from __future__ import annotations

import argparse

import anyio

from automations.connection import connect
from automations.keys import Keys
from automations.proactive import run_timer_service
from automations.service import ServiceContext
from automations.settings import Settings
from bench.procs import own_rss, say, wait_for_go, wait_for_signal


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run_timer")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--consumer", default="bench-timer")
    return parser.parse_args()


async def main() -> None:
    args = parse()
    settings = Settings(redis_url=args.redis_url, prefix=args.prefix,
                        consumer_name=args.consumer, block_ms=50)
    keys = Keys(args.prefix)
    redis = connect(settings)
    say(ready=True, rss=own_rss())
    await wait_for_go()
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_timer_service, ServiceContext(settings, redis, keys, stopping))
        await wait_for_signal()
        stopping.set()
    say(stopped=True, rss=own_rss())
    await redis.aclose()


if __name__ == "__main__":
    anyio.run(main)
