"""``automations.connection``: the clients the services and ``emit()`` use, against a real
Redis."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from automations.connection import MAX_CONNECTIONS, connect, connect_sync
from automations.settings import Settings

IN_FLIGHT = 150  # more than redis-py's default pool of 100


async def test_many_commands_in_flight_each_get_a_connection(settings: Settings) -> None:
    """redis-py's default pool raises ``MaxConnectionsError`` past 100 commands in flight,
    which the services take for Redis being away (a dispatcher lost its leases that way)."""
    client = connect(settings)
    try:
        replies = await asyncio.gather(*(
            client.blpop([f"{settings.prefix}:idle:{n}"], timeout=0.3) for n in range(IN_FLIGHT)))
        assert replies == [None] * IN_FLIGHT
        assert len(client.connection_pool._in_use_connections) == 0  # all handed back
    finally:
        await client.aclose()


def test_the_sync_client_serves_as_many_threads(settings: Settings) -> None:
    client = connect_sync(settings)
    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            replies = list(pool.map(
                lambda n: client.blpop([f"{settings.prefix}:idle:{n}"], timeout=0.3),
                range(IN_FLIGHT)))
        assert replies == [None] * IN_FLIGHT
    finally:
        client.close()


def test_a_sentinel_master_client_has_the_same_pool_bound(settings: Settings) -> None:
    """Sentinels are only asked at the first command: the bound is read without one."""
    with_sentinels = settings.model_copy(update={
        "redis_sentinels": "127.0.0.1:9", "redis_url": None})
    client = connect(with_sentinels)
    assert client.connection_pool.max_connections == MAX_CONNECTIONS
