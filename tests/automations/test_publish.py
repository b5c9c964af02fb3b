"""Publishing: what lands in the stream, batching, and clear errors (nothing dropped silently)."""

from __future__ import annotations

import types
from typing import Any
from uuid import UUID

import anyio
import pytest
import redis.asyncio as aioredis

import automations
from automations.errors import BusUnavailable, EventTooLarge, InvalidEvent
from automations.events import Event
from automations.keys import Keys
from automations.settings import Settings
from automations.streams.publish import Publisher, aemit, aemit_many, build_event, emit, emit_many
from bench.redis_server import free_port


async def stream_events(redis: aioredis.Redis, keys: Keys) -> list[tuple[bytes, Event]]:
    entries: Any = await redis.xrange(keys.events)
    return [(f[b"id"], Event.from_json(f[b"data"])) for _, f in entries]


def test_build_event_accepts_a_name_a_dict_or_a_model() -> None:
    by_name = build_event("a.b", resource="thing.1", payload={"x": 1})
    assert by_name.resource == {"prefect.resource.id": "thing.1"}
    by_dict = build_event({"event": "a.b", "resource": {"prefect.resource.id": "r"}}, event="c")
    assert by_dict.event == "c"
    assert build_event(by_name) is by_name
    assert build_event({"event": "a", "resource": "r.1"}).resource_id == "r.1"
    assert build_event(by_name, event="renamed").id == by_name.id
    with pytest.raises(InvalidEvent, match="resource"):
        build_event("a.b")


async def test_aemit_publishes_the_event_json_and_its_id(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    event = await aemit("app.started", resource="app.1", payload={"v": 2}, settings=settings)
    [(entry_id, stored)] = await stream_events(redis, keys)
    assert entry_id == str(event.id).encode()
    assert stored == event


async def test_aemit_many_keeps_order_ids_and_times_across_chunks(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    events = [Event(event="n", resource={"prefect.resource.id": f"r{i}"}) for i in range(2500)]
    await aemit_many(events, redis=redis, settings=settings)
    stored = await stream_events(redis, keys)
    assert [e for _, e in stored] == events


def test_sync_emit_and_emit_many(redis_url: str, settings: Settings, keys: Keys) -> None:
    given = UUID("0190a000-0000-7000-8000-0000000000aa")
    event = emit({"id": str(given), "event": "x", "resource": {"prefect.resource.id": "r"}},
                 settings=settings)
    assert event.id == given
    emit_many([{"event": "y", "resource": {"prefect.resource.id": "r"}}], settings=settings)

    async def check() -> list[str]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return [e.event for _, e in await stream_events(client, keys)]
        finally:
            await client.delete(keys.events)
            await client.aclose()

    assert anyio.run(check) == ["x", "y"]


async def test_an_invalid_event_in_a_batch_publishes_nothing(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    good = {"event": "ok", "resource": {"prefect.resource.id": "r"}}
    with pytest.raises(InvalidEvent, match=r"related\[0\]"):
        await aemit_many([good, {**good, "related": [{"prefect.resource.id": "x"}]}],
                         redis=redis, settings=settings)
    huge = Event(event="big", resource={"prefect.resource.id": "r"}, payload={"x": "y" * 1_600_000})
    with pytest.raises(EventTooLarge):
        await aemit_many([good, huge], redis=redis, settings=settings)
    assert await redis.xlen(keys.events) == 0


async def test_unreachable_redis_raises_bus_unavailable_without_the_password(
    settings: Settings,
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    down = settings.model_copy(update={"redis_url": url})
    with pytest.raises(BusUnavailable) as err:
        await aemit("x", resource="r", settings=down)
    assert "127.0.0.1" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(BusUnavailable) as sync_err:
        emit("x", resource="r", settings=down)
    assert "hunter2" not in str(sync_err.value)


async def test_publisher_trims_only_acknowledged_entries(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    publisher = Publisher(redis, settings, maxlen=1000)
    await redis.xgroup_create(keys.events, "engine", id="$", mkstream=True)
    for _ in range(4):
        await publisher.publish([Event(event="e", resource={"prefect.resource.id": "r"})
                                 for _ in range(500)])
        await anyio.sleep(0.003)  # ids of later milliseconds: the trim target is interpolated
    assert await redis.xlen(keys.events) == 2000  # nothing delivered yet: nothing trimmed
    await redis.xreadgroup("engine", "c", {keys.events: ">"}, count=5000)
    pending: Any = await redis.xpending_range(keys.events, "engine", "-", "+", 5000)
    await redis.xack(keys.events, "engine", *[p["message_id"] for p in pending])
    await publisher.publish([Event(event="e", resource={"prefect.resource.id": "r"})])
    assert 1000 <= await redis.xlen(keys.events) < 1100
    assert repr(publisher) == f"Publisher({keys.events!r}, published=2001)"


def test_from_automations_import_emit_is_the_function_after_the_submodule_import(
    settings: Settings,
) -> None:
    # The publishing module is imported by now; the package export is still the function.
    assert isinstance(automations.streams.publish, types.ModuleType)
    assert automations.emit is automations.streams.publish.emit
    with pytest.raises(BusUnavailable):
        automations.emit("x", resource="r", settings=settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
