"""Child process: the action dispatcher service on a prefix, driven by ``bench.procs``.

``python -m bench.run_dispatcher --redis-url URL --prefix P --automations FILE``: applies the
automations to the store (the dispatcher reads them there), then runs the service.
"""

from __future__ import annotations

import argparse

import anyio

from automations.connection import connect
from automations.dispatch_service import run_dispatcher_service
from automations.keys import Keys
from automations.models import Automation
from automations.service import ServiceContext
from automations.settings import Settings
from automations.store import AutomationStore
from bench.procs import own_rss, read_json, say, wait_for_go, wait_for_signal


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run_dispatcher")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--automations", required=True, help="JSON list of automations")
    parser.add_argument("--consumer", default="bench-dispatcher")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="entries per XREADGROUP (default: the Settings default)")
    return parser.parse_args()


async def main() -> None:
    args = parse()
    extra = {"batch_size": args.batch_size} if args.batch_size else {}
    settings = Settings(redis_url=args.redis_url, prefix=args.prefix,
                        consumer_name=args.consumer, block_ms=50, **extra)
    keys = Keys(args.prefix)
    redis = connect(settings)
    automations = [Automation.model_validate(a) for a in read_json(args.automations)]
    await AutomationStore(redis, keys).apply(automations)
    say(ready=True, rss=own_rss(), automations=len(automations))
    await wait_for_go()
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_dispatcher_service, ServiceContext(settings, redis, keys, stopping))
        await wait_for_signal()
        stopping.set()
    say(stopped=True, rss=own_rss())
    await redis.aclose()


if __name__ == "__main__":
    anyio.run(main)
