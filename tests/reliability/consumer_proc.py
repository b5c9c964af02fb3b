"""A real consumer process for the kill and drain tests: ``python -m tests.reliability.consumer_proc
MODE REDIS_URL PREFIX``. It prints ``batch <n>`` when a batch reaches its handler.

- ``hang``: the handler never returns (the test SIGKILLs the process mid-batch).
- ``serve``: ``service.serve`` with one consumer service whose handler takes 1 s, then sets
  ``<prefix>:handled`` to the batch size (the test sends SIGTERM mid-batch).
"""

from __future__ import annotations

import logging
import sys

import anyio

from automations.connection import connect
from automations.keys import Keys
from automations.service import ServiceContext, serve
from automations.settings import Settings
from automations.streams.consumer import StreamConsumer
from automations.streams.entries import Entry


def announce(entries: list[Entry]) -> None:
    print(f"batch {len(entries)}", flush=True)


async def hang(settings: Settings) -> None:
    async def handler(entries: list[Entry]) -> None:
        announce(entries)
        await anyio.sleep_forever()

    keys = Keys.from_settings(settings)
    client = connect(settings)
    consumer = StreamConsumer(client, settings, stream=keys.events, group="engine",
                              handler=handler, dead_stream=keys.dead(keys.events),
                              consumer="doomed")
    await consumer.run()


async def slow_service(ctx: ServiceContext) -> None:
    async def handler(entries: list[Entry]) -> None:
        announce(entries)
        await anyio.sleep(1.0)  # slow work: the test's SIGTERM lands mid-batch
        await ctx.redis.set(f"{ctx.settings.prefix}:handled", len(entries))

    consumer = StreamConsumer(ctx.redis, ctx.settings, stream=ctx.keys.events, group="engine",
                              handler=handler, dead_stream=ctx.keys.dead(ctx.keys.events))
    await consumer.run(ctx.stopping)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    mode, url, prefix = sys.argv[1:4]
    settings = Settings(redis_url=url, prefix=prefix, block_ms=50)
    if mode == "hang":
        anyio.run(hang, settings)
    else:
        anyio.run(lambda: serve(settings, services={"slow": slow_service}))


if __name__ == "__main__":
    main()
