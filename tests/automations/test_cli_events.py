"""``automations emit``, ``automations events tail`` and ``events schema`` from the outside."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from typer.testing import CliRunner

from automations.cli.app import app
from automations.events import Event
from automations.keys import Keys
from bench.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("automations"))


@pytest.fixture
def env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    return {"AUTOMATIONS_REDIS_URL": redis_url, "AUTOMATIONS_PREFIX": prefix,
            "AUTOMATIONS_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def sync_redis(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


def invoke(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env, input=stdin)


def stored(client: redis.Redis, keys: Keys) -> list[Event]:
    entries: Any = client.xrange(keys.events)
    return [Event.from_json(fields[b"data"]) for _, fields in entries]


def test_emit_one_event_from_arguments(
    env: dict[str, str], sync_redis: redis.Redis, keys: Keys
) -> None:
    result = invoke(
        env, "emit", "app.deployed", "--resource", "app.web", "-r", "env=prod",
        "--related", "flow:prefect.flow.1,prefect.resource.name=etl",
        "--related", "tag:prefect.tag.x",
        "--payload", '{"version": "1.2"}', "--id", "0190a000-0000-7000-8000-000000000007",
        "--occurred", "2026-03-04T05:06:07Z",
    )
    assert result.exit_code == 0, result.output
    [event] = stored(sync_redis, keys)
    assert result.stdout.strip() == str(event.id) == "0190a000-0000-7000-8000-000000000007"
    assert event.event == "app.deployed"
    assert event.resource == {"prefect.resource.id": "app.web", "env": "prod"}
    assert event.related == [
        {"prefect.resource.id": "prefect.flow.1", "prefect.resource.name": "etl",
         "prefect.resource.role": "flow"},
        {"prefect.resource.id": "prefect.tag.x", "prefect.resource.role": "tag"},
    ]
    assert event.payload == {"version": "1.2"}
    assert event.occurred.isoformat() == "2026-03-04T05:06:07+00:00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["emit", "x", "-r", "r", "--payload", "{nope"], "--payload is not valid JSON"),
        (["emit", "x", "-r", "env=prod"], "resource needs a non-empty 'prefect.resource.id'"),
        (["emit", "x", "-r", "r", "--related", "noroles"], "expected ROLE:KEY=VALUE"),
        (["emit", "x", "-r", "=v"], "expected KEY=VALUE"),
        (["emit", "x", "-r", "r", "--id", "12"], "id: Input should be a valid UUID"),
        (["emit"], "give an event NAME, or --file"),
        (["emit", "x", "--file", "f.jsonl"], "not both"),
        (["emit", "--file", "/nonexistent/f.jsonl"], "cannot read /nonexistent/f.jsonl"),
    ],
)
def test_emit_mistakes_are_one_line_and_exit_2(
    env: dict[str, str], sync_redis: redis.Redis, keys: Keys, args: list[str], message: str
) -> None:
    result = invoke(env, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sync_redis.xlen(keys.events) == 0


def test_emit_without_a_name_or_a_file_says_what_to_give_before_trying_redis() -> None:
    result = CliRunner().invoke(app, ["emit"],
                                env={"AUTOMATIONS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2
    assert result.stderr == "error: give an event NAME, or --file FILE.jsonl (- for stdin)\n"


def test_emit_file_keeps_ids_and_times_and_reports_bad_lines(
    env: dict[str, str], sync_redis: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    good = [
        {"id": f"0190a000-0000-7000-8000-00000000000{i}", "occurred": f"2026-01-01T00:00:0{i}Z",
         "event": f"e{i}", "resource": {"prefect.resource.id": "r"}}
        for i in range(3)
    ]
    lines = [orjson.dumps(good[0]).decode(), "{broken", orjson.dumps(good[1]).decode(), "",
             '{"event": "no-resource"}', orjson.dumps(good[2]).decode()]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = invoke(env, "emit", "--file", str(path))
    assert result.exit_code == 2
    assert "line 2: Invalid JSON" in result.stderr
    assert "line 5: resource: Field required" in result.stderr
    assert "emitted 3 events, 2 bad lines skipped" in result.stderr
    events = stored(sync_redis, keys)
    assert [Event.parse(g) for g in good] == events


def test_emit_file_accepts_a_bare_string_resource_as_python_emit_does(
    env: dict[str, str], sync_redis: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "prefect.flow-run.Failed", "resource": "prefect.flow-run.1"}\n'
                    '{"event": "x", "resource": "prefect.flow-run.2", "occurred": "soon"}\n'
                    '{"event": "x", "resource": ""}\n')
    result = invoke(env, "emit", "--file", str(path))
    assert result.exit_code == 2
    assert "line 2: occurred:" in result.stderr  # the real mistake, not the resource's form
    assert "line 3: resource" in result.stderr
    assert "emitted 1 events, 2 bad lines skipped" in result.stderr
    [event] = stored(sync_redis, keys)
    assert event.resource == {"prefect.resource.id": "prefect.flow-run.1"}


def test_emit_from_stdin(env: dict[str, str], sync_redis: redis.Redis, keys: Keys) -> None:
    lines = "".join(
        orjson.dumps({"event": "s", "resource": {"prefect.resource.id": f"r{i}"}}).decode() + "\n"
        for i in range(1500)
    )
    result = invoke(env, "emit", "--file", "-", stdin=lines)
    assert result.exit_code == 0, result.stderr
    assert "emitted 1500 events" in result.stderr
    assert sync_redis.xlen(keys.events) == 1500


def test_emit_to_unreachable_redis_exits_4(env: dict[str, str]) -> None:
    down = {**env, "AUTOMATIONS_REDIS_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0"}
    result = invoke(down, "emit", "x", "-r", "r")
    assert result.exit_code == 4
    assert "cannot publish to Redis at redis://127.0.0.1" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_events_schema_prints_the_event_json_schema(env: dict[str, str]) -> None:
    result = invoke(env, "events", "schema")
    assert result.exit_code == 0
    assert orjson.loads(result.stdout)["title"] == "Event"


def _start_tail(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [EXE, "events", "tail", *args], env={**os.environ, **env, "COLUMNS": "200"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the first line says it is listening (pytest-timeout guards)
    assert "tailing" in line, line
    return proc


def test_tail_json_shows_events_emitted_after_it_started(
    env: dict[str, str], sync_redis: redis.Redis, keys: Keys
) -> None:
    invoke(env, "emit", "before", "-r", "r")
    proc = _start_tail(env, "--json", "--count", "2")
    try:
        invoke(env, "emit", "first", "-r", "r1", "--payload", '{"n": 1}')
        invoke(env, "emit", "second", "-r", "r2")
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    events = [Event.from_json(line) for line in out.splitlines()]
    assert [e.event for e in events] == ["first", "second"]
    assert events[0].payload == {"n": 1}


def test_tail_pretty(env: dict[str, str], sync_redis: redis.Redis) -> None:
    proc = _start_tail(env, "-n", "1")
    try:
        invoke(env, "emit", "app.pretty", "-r", "thing.7", "--related", "tag:prefect.tag.x")
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "app.pretty thing.7 tag=prefect.tag.x" in out
