"""The automations store on a real Redis: upsert by name, atomicity, the change log."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest
import redis.asyncio as aioredis
import yaml

from automations.errors import InvalidAutomation, InvalidAutomations, NotFound
from automations.keys import Keys
from automations.loader import load_files
from automations.models import Automation
from automations.store import AutomationChange, AutomationStore, InvalidStoredAutomation
from automations.store_plan import trigger_shape


def make(name: str = "a", *, expect: str = "x.y", threshold: int = 1, **extra: Any) -> Automation:
    return Automation.model_validate({
        "name": name, "trigger": {"expect": [expect], "threshold": threshold, "within": 60},
        "actions": [{"type": "do-nothing"}], **extra})


async def log_entries(store: AutomationStore) -> list[AutomationChange]:
    return await store.read_changes("0-0")


async def test_apply_creates_then_reports_unchanged(store: AutomationStore) -> None:
    first = await store.apply([make("a"), make("b")])
    assert (first.created, first.updated, first.unchanged) == (["a", "b"], [], [])
    again = await store.apply([make("a"), make("b")])  # fresh ids in the objects: by name
    assert (again.created, again.updated, again.unchanged) == ([], [], ["a", "b"])
    assert not again.changed
    assert [a.name for a in await store.all()] == ["a", "b"]
    assert [c.kind for c in await log_entries(store)] == ["upsert", "upsert"]


async def test_update_keeps_the_id_and_the_trigger_ids_when_the_trigger_is_unchanged(
    store: AutomationStore,
) -> None:
    await store.apply([make("a")])
    stored = await store.by_name("a")
    result = await store.apply([make("a", description="now described")])
    assert result.updated == ["a"] and result.trigger_reset == []
    updated = await store.by_name("a")
    assert updated.id == stored.id and updated.trigger.id == stored.trigger.id
    assert updated.description == "now described"
    last = (await log_entries(store))[-1]
    assert (last.kind, last.automation_id, last.trigger_changed) == ("upsert", stored.id, False)
    assert last.automation == updated


async def test_a_changed_trigger_is_flagged_so_the_engine_resets_its_state(
    store: AutomationStore,
) -> None:
    await store.apply([make("a")])
    stored = await store.by_name("a")
    result = await store.apply([make("a", threshold=5)])
    assert result.trigger_reset == ["a"]
    updated = await store.by_name("a")
    assert updated.id == stored.id and updated.trigger.threshold == 5
    assert (await log_entries(store))[-1].trigger_changed is True


async def test_prune_deletes_what_the_files_no_longer_hold(
    store: AutomationStore, redis: aioredis.Redis, keys: Keys
) -> None:
    await store.apply([make("a"), make("b")])
    gone = await store.by_name("b")
    await redis.hset(keys.last_fired, str(gone.id), "2026-01-01T00:00:00+00:00")
    result = await store.apply([make("a")], prune=True)
    assert (result.unchanged, result.deleted) == (["a"], ["b"])
    assert [a.name for a in await store.all()] == ["a"]
    assert await redis.hget(keys.last_fired, str(gone.id)) is None
    last = (await log_entries(store))[-1]
    assert (last.kind, last.automation_id, last.automation) == ("delete", gone.id, None)


async def test_dry_run_reports_and_writes_nothing(
    store: AutomationStore, redis: aioredis.Redis, keys: Keys
) -> None:
    await store.apply([make("keep"), make("old")])
    before = await log_entries(store)
    result = await store.apply([make("keep", threshold=2), make("new")], prune=True, dry_run=True)
    assert (result.created, result.updated, result.deleted) == (["new"], ["keep"], ["old"])
    assert result.dry_run and "dry run" in result.summary()
    assert await log_entries(store) == before
    assert sorted(a.name for a in await store.all()) == ["keep", "old"]
    assert (await store.by_name("keep")).trigger.threshold == 1


async def test_one_refused_automation_means_nothing_is_stored(
    store: AutomationStore, redis: aioredis.Redis, keys: Keys
) -> None:
    await store.apply([make("owner")])
    taken = (await store.by_name("owner")).id
    clash = make("clash", id=str(taken))  # an explicit id that belongs to another automation
    with pytest.raises(InvalidAutomations) as info:
        await store.apply([make("fine"), clash])
    assert "already belongs to automation 'owner'" in str(info.value)
    assert [a.name for a in await store.all()] == ["owner"]
    assert len(await log_entries(store)) == 1


async def test_duplicate_names_in_one_apply_are_refused(store: AutomationStore) -> None:
    with pytest.raises(InvalidAutomations, match="duplicate name 'a'"):
        await store.apply([make("a"), make("a", expect="other")])
    assert await store.all() == []


async def test_a_new_automation_keeps_its_explicit_id(store: AutomationStore) -> None:
    ident = "00000000-0000-4000-8000-0000000000aa"
    await store.apply([make("a", id=ident)])
    assert (await store.by_name("a")).id == UUID(ident)
    assert (await store.find(ident)).name == "a"


async def test_pause_and_resume_write_log_entries_and_keep_the_trigger(
    store: AutomationStore,
) -> None:
    await store.apply([make("a")])
    stored = await store.by_name("a")
    paused = await store.set_enabled(stored.id, False)
    assert paused.enabled is False and paused.trigger.id == stored.trigger.id
    assert (await store.set_enabled(stored.id, False)) == paused  # no-op, no log entry
    resumed = await store.set_enabled(stored.id, True)
    assert resumed.enabled is True
    entries = await log_entries(store)
    assert [(c.automation.enabled if c.automation else None, c.trigger_changed)
            for c in entries[1:]] == [(False, False), (True, False)]


async def test_resuming_runs_the_loop_guard_again(store: AutomationStore) -> None:
    loopy = Automation.model_validate({"name": "loopy", "enabled": False, "trigger": {},
                                       "actions": [{"type": "do-nothing"}]})
    await store.apply([loopy])  # a paused automation cannot loop, so it is stored
    stored = await store.by_name("loopy")
    with pytest.raises(InvalidAutomation, match="loop guard"):
        await store.set_enabled(stored.id, True)
    assert (await store.by_name("loopy")).enabled is False


async def test_delete_by_name_or_id_and_not_found(store: AutomationStore) -> None:
    await store.apply([make("a"), make("b")])
    assert (await store.delete("a")).name == "a"
    b = await store.by_name("b")
    assert (await store.delete(str(b.id))).name == "b"
    assert await store.all() == []
    with pytest.raises(NotFound):
        await store.delete("a")
    with pytest.raises(NotFound):
        await store.by_name("b")
    with pytest.raises(NotFound):
        await store.set_enabled(b.id, True)
    assert await store.get(b.id) is None


async def test_a_stored_automation_that_no_longer_validates_is_invalid_not_missing(
    store: AutomationStore, redis: aioredis.Redis, keys: Keys
) -> None:
    await store.apply([make("a"), make("b")])
    a = await store.by_name("a")
    await redis.hset(keys.automations, str(a.id), b'{"name": "a"}')
    reason = f"automation {a.id} is stored but no longer valid: trigger: Field required"
    with pytest.raises(InvalidStoredAutomation, match=reason):
        await store.get(a.id)
    with pytest.raises(InvalidStoredAutomation):
        await store.by_name("a")
    with pytest.raises(InvalidStoredAutomation):
        await store.set_enabled(a.id, False)
    assert [x.name for x in await store.all()] == ["b"]  # listings skip it
    assert await store.get(uuid4()) is None
    assert await store.stored_json([a.id, uuid4()]) == [b'{"name": "a"}', None]


async def test_snapshot_and_changes_follow_the_log(store: AutomationStore) -> None:
    assert await store.snapshot() == ([], "0-0")
    await store.apply([make("a")])
    automations, position = await store.snapshot()
    assert [a.name for a in automations] == ["a"] and position == await store.last_log_id()
    seen: list[AutomationChange] = []

    async def consume() -> None:
        async for change in store.changes(position, block_ms=50):
            seen.append(change)
            if len(seen) == 2:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)  # from the snapshot's position: no race with the apply
        await store.apply([make("a", threshold=3), make("b")])
    assert sorted(c.automation.name for c in seen if c.automation) == ["a", "b"]


async def test_malformed_log_entries_and_stored_junk_are_skipped(
    store: AutomationStore, redis: aioredis.Redis, keys: Keys
) -> None:
    await redis.xadd(keys.automations_log, {"kind": "upsert", "id": "not-a-uuid"})
    await redis.xadd(keys.automations_log, {"kind": "rename", "id": str(UUID(int=1))})
    await redis.hset(keys.automations, str(UUID(int=2)), b"{not json")
    await store.apply([make("a")])
    assert [c.kind for c in await log_entries(store)] == ["upsert"]
    assert [a.name for a in await store.all()] == ["a"]


async def test_concurrent_applies_all_land(
    redis_url: str, keys: Keys, redis: aioredis.Redis
) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for i, client in enumerate(clients):
                tg.start_soon(AutomationStore(client, keys).apply,
                              [make(f"n{i}-{j}", expect=f"e{j}") for j in range(5)])
    finally:
        for client in clients:
            await client.aclose()
    store = AutomationStore(redis, keys)
    assert len(await store.all()) == 20
    assert len(await log_entries(store)) == 20
    assert len(await redis.hgetall(keys.automation_names)) == 20


async def test_python_json_yaml_store_round_trip(store: AutomationStore, tmp_path: Path) -> None:
    original = Automation.model_validate({
        "name": "round trip", "tags": ["t"], "trigger": {
            "type": "sequence", "within": "PT1H", "triggers": [
                {"expect": ["a"], "for_each": ["prefect.resource.id"]},
                {"posture": "Proactive", "after": ["b"], "expect": ["c"], "within": 30,
                 "for_each": ["prefect.resource.id"]}]},
        "actions": [{"type": "call-webhook", "url": "http://127.0.0.1:9/",
                     "payload": {"id": "{{ event.id }}"}}],
        "actions_on_trigger": [{"type": "do-nothing"}]})
    path = tmp_path / "rt.yaml"
    path.write_text(yaml.safe_dump(original.model_dump(mode="json")))
    [loaded] = load_files([path])
    await store.apply([loaded])
    stored = await store.by_name("round trip")
    assert stored == original
    assert trigger_shape(stored.trigger) == trigger_shape(original.trigger)
    assert (await store.apply([original])).unchanged == ["round trip"]
