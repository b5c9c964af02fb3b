"""The command packer: the same bytes as redis-py's for any command, the same refusals, and
in use on every client ``connect`` builds (a real Redis answers what it packs)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from automations.command_packing import BUFFER_CUTOFF, FastPacking, fast_packing, pack_command
from automations.connection import connect
from automations.settings import Settings

REFERENCE = Connection()  # redis-py's packer (packing needs no connection)

argument = st.one_of(
    st.binary(max_size=64), st.text(max_size=64), st.integers(), st.floats(allow_nan=False),
    st.binary(min_size=BUFFER_CUTOFF - 2, max_size=BUFFER_CUTOFF + 2),
    st.builds(memoryview, st.binary(max_size=32)),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.sampled_from(["EVALSHA", b"XACK", "CONFIG GET", b"SCRIPT LOAD"]),
       st.lists(argument, max_size=40))
def test_bytes_are_redis_pys(command: str | bytes, args: list[Any]) -> None:
    assert b"".join(pack_command(command, *args)) == b"".join(
        REFERENCE.pack_command(command, *args))


def test_large_arguments_are_chunks_of_their_own() -> None:
    big = b"x" * (BUFFER_CUTOFF + 1)
    chunks = pack_command("SET", "k", big)
    assert any(chunk is big for chunk in chunks)  # sent as it is, not copied into a buffer


@pytest.mark.parametrize("bad", [True, None, {"a": 1}, [1], object()])
def test_what_redis_py_refuses_is_refused(bad: Any) -> None:
    with pytest.raises(DataError):
        REFERENCE.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        pack_command("SET", "k", bad)


def test_one_class_per_connection_class() -> None:
    made = fast_packing(Connection)
    assert made is fast_packing(Connection) and fast_packing(made) is made
    assert issubclass(made, Connection) and issubclass(made, FastPacking)


async def test_clients_of_connect_pack_with_it(settings: Settings, prefix: str) -> None:
    client: aioredis.Redis = connect(settings)
    try:
        big = "é" * BUFFER_CUTOFF
        await client.set(f"{prefix}:big", big)
        assert (await client.get(f"{prefix}:big")).decode() == big
        ids = [await client.xadd(f"{prefix}:s", {b"n": n}) for n in range(300)]
        await client.xgroup_create(f"{prefix}:s", "g", id="0")
        await client.xreadgroup("g", "c", {f"{prefix}:s": ">"}, count=300)
        assert await client.xack(f"{prefix}:s", "g", *ids) == 300
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(f"{prefix}:n", 7).incrbyfloat(f"{prefix}:n", 0.5)
            assert await pipe.execute() == [True, 7.5]
        connection = await client.connection_pool.get_connection()
        try:
            assert isinstance(connection, FastPacking)
        finally:
            await client.connection_pool.release(connection)
    finally:
        await client.delete(f"{prefix}:big", f"{prefix}:s", f"{prefix}:n")
        await client.aclose()
