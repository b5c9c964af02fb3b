"""``automations replay`` through the real CLI against the session Redis: events published with
``emit``, replayed with file and stored automations, the ``--since`` window, skipped entries,
no writes at all, and the events-file mode."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from typer.testing import CliRunner, Result

from automations.cli.app import app
from automations.cli.common import EXIT_USER_ERROR
from automations.keys import Keys
from automations.settings import Settings
from automations.streams.publish import emit, emit_many

TWO_FAILURES: dict[str, Any] = {
    "name": "two failures", "actions": [{"type": "do-nothing"}],
    "trigger": {"expect": ["prefect.flow-run.Failed"], "threshold": 2, "within": 3600,
                "for_each": ["prefect.resource.id"]},
}
STUCK: dict[str, Any] = {
    "name": "stuck", "actions": [{"type": "do-nothing"}],
    "trigger": {"posture": "Proactive", "after": ["prefect.flow-run.Running"],
                "expect": ["prefect.flow-run.Completed"], "for_each": ["prefect.resource.id"],
                "within": 600},
}


@pytest.fixture
def client(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    sync = redis.Redis.from_url(redis_url)
    yield sync
    found = list(sync.scan_iter(match=f"{prefix}:*"))
    if found:
        sync.delete(*found)
    sync.close()


@pytest.fixture
def cli(redis_url: str, prefix: str, client: redis.Redis) -> Any:
    env = {"AUTOMATIONS_REDIS_URL": redis_url, "AUTOMATIONS_PREFIX": prefix}

    def invoke(*args: str | Path, code: int = 0) -> Result:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env)
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    return invoke


def spec(tmp_path: Path, *automations: dict[str, Any]) -> Path:
    path = tmp_path / "automations.yaml"
    path.write_text(yaml.safe_dump({"automations": list(automations)}))
    return path


def failed(run: str, **extra: Any) -> dict[str, Any]:
    return {"event": "prefect.flow-run.Failed",
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run}"}, **extra}


def rows(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def everything(client: redis.Redis) -> tuple[int, dict[bytes, Any]]:
    """DBSIZE and every key with its type and length or value: to show nothing changed."""
    state: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        size = client.xlen(key) if kind == b"stream" else client.dump(key)
        state[key] = (kind, size, client.pttl(key) > 0)
    return int(client.dbsize()), state


def test_replays_file_automations_over_the_stream_and_writes_nothing(
    cli: Any, settings: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    published = emit_many([{"event": "prefect.flow-run.Running", "resource": "prefect.flow-run.c",
                            "occurred": hour_ago}, failed("a"), failed("b"), failed("a")],
                          settings=settings)
    before = everything(client)
    result = cli("replay", spec(tmp_path, TWO_FAILURES, STUCK), "--json")
    assert everything(client) == before
    found = rows(result)
    assert [(r["automation"], r["labels"]) for r in found] == [
        ("stuck", {"prefect.resource.id": "prefect.flow-run.c"}),
        ("two failures", {"prefect.resource.id": "prefect.flow-run.a"}),
    ]
    assert found[0]["triggered"] == (hour_ago + timedelta(seconds=600)).isoformat()
    assert found[1]["event_id"] == str(published[3].id)
    assert found[1]["stream_id"] is not None and found[1]["stream_id"].count("-") == 1
    assert "over 4 event(s) from the events stream" in result.stderr
    assert "nothing was written and no action ran" in result.stderr
    table = cli("replay", spec(tmp_path, TWO_FAILURES)).stdout
    assert "failures" in table and "when (UTC)" in table
    assert "1 firing(s) of 1 of 1 enabled automation(s) over 4 event(s)" in table


def test_replays_stored_automations(cli: Any, settings: Settings, client: redis.Redis,
                                    tmp_path: Path) -> None:
    cli("apply", spec(tmp_path, TWO_FAILURES, {**STUCK, "enabled": False}))
    for _ in range(2):
        emit(failed("x"), settings=settings)
    before = everything(client)
    result = cli("replay", "--json")
    assert everything(client) == before
    assert [r["automation"] for r in rows(result)] == ["two failures"]
    assert "of 1 enabled automation(s)" in result.stderr


def test_since_and_until_select_stream_entries(cli: Any, settings: Settings,
                                               client: redis.Redis, tmp_path: Path) -> None:
    keys = Keys.from_settings(settings)
    emit_many([failed("a"), failed("a")], settings=settings)
    last: Any = client.xrevrange(keys.events, count=1)
    last_ms = int(last[0][0].split(b"-")[0])
    deadline = time.monotonic() + 5
    while time.time() * 1000 < last_ms + 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # the next entries get a millisecond after the cutoff's
    emit_many([failed("b"), failed("b")], settings=settings)
    cutoff = datetime.fromtimestamp((last_ms + 1) / 1000, UTC).isoformat()
    path = spec(tmp_path, TWO_FAILURES)
    later = rows(cli("replay", path, "--since", cutoff, "--json"))
    assert [r["labels"]["prefect.resource.id"] for r in later] == ["prefect.flow-run.b"]
    earlier = cli("replay", path, "--until", cutoff, "--json")
    assert [r["labels"]["prefect.resource.id"] for r in rows(earlier)] == ["prefect.flow-run.a"]
    assert "over 2 event(s)" in earlier.stderr
    assert len(rows(cli("replay", path, "--since", "1h", "--json"))) == 2
    assert rows(cli("replay", path, "--since", "2h", "--until", "1h", "--json")) == []
    bad = cli("replay", path, "--since", "yesterday", code=EXIT_USER_ERROR)
    assert "--since: expected a duration" in bad.stderr


def test_undecodable_entries_are_skipped_and_counted(cli: Any, settings: Settings,
                                                     client: redis.Redis, tmp_path: Path) -> None:
    keys = Keys.from_settings(settings)
    emit(failed("a"), settings=settings)
    client.xadd(keys.events, {"data": "not json"})
    client.xadd(keys.events, {"other": "field"})
    client.xadd(keys.events, {"data": json.dumps({"id": str(uuid.uuid4()), "event": "x"})})
    emit(failed("a"), settings=settings)
    result = cli("replay", spec(tmp_path, TWO_FAILURES), "--json")
    assert len(rows(result)) == 1
    assert "3 undecodable entr(ies) skipped" in result.stderr
    assert "invalid event: not JSON" in result.stderr
    assert "stream entry has no 'data' field" in result.stderr


def test_events_file_mode_with_a_time_window(cli: Any, settings: Settings, client: redis.Redis,
                                             tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    lines = [failed("a", occurred=(t0 + timedelta(minutes=m)).isoformat(),
                    id=str(uuid.uuid4())) for m in (0, 1, 10, 11)]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    path = spec(tmp_path, {**TWO_FAILURES, "trigger": {**TWO_FAILURES["trigger"],
                                                      "within": 120}})
    before = everything(client)
    result = cli("replay", path, "--events", events, "--json")
    assert [r["triggered"] for r in rows(result)] == [(t0 + timedelta(minutes=m)).isoformat()
                                                      for m in (1, 11)]
    assert [r["event_line"] for r in rows(result)] == [2, 4]
    assert "1 bad event line(s) skipped" in result.stderr
    window = cli("replay", path, "--events", events, "--json",
                 "--since", (t0 + timedelta(minutes=5)).isoformat())
    assert [r["event_line"] for r in rows(window)] == [4]
    cli("apply", path)
    stored = cli("replay", "--events", events, "--json")
    assert len(rows(stored)) == 2
    assert everything(client)[1].keys() - before[1].keys() == {
        k.encode() for k in (Keys.from_settings(settings).automations,
                             Keys.from_settings(settings).automation_names,
                             Keys.from_settings(settings).automations_log)}  # only `apply` wrote
