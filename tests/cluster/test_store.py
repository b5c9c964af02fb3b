"""The automations store on the cluster through the CLI (``AUTOMATIONS_REDIS_CLUSTER=true``,
``AUTOMATIONS_REDIS_URL`` one node): apply, ls, pause, resume, delete, and the change log the
engines follow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from automations.connection import connect
from automations.keys import Keys
from automations.settings import Settings
from automations.store import AutomationChange, AutomationStore
from tests.automations.documents import write


def automation(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "trigger": {"expect": ["prefect.flow-run.Failed"], "threshold": 3,
                                      "within": 600, "for_each": ["prefect.resource.id"]},
            "actions": [{"type": "do-nothing"}], **extra}


def listed(cli: Any) -> dict[str, bool]:
    lines = cli("ls", "--json").stdout.splitlines()
    return {a["name"]: a["enabled"] for a in map(json.loads, lines)}


def test_apply_ls_pause_resume_delete_through_the_cli(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", [automation("one"), automation("two")])
    assert "2 created" in cli("apply", path).stdout
    assert "2 unchanged" in cli("apply", path).stdout
    assert listed(cli) == {"one": True, "two": True}
    cli("pause", "one")
    assert listed(cli) == {"one": False, "two": True}
    cli("resume", "one")
    assert listed(cli) == {"one": True, "two": True}
    pruned = cli("apply", write(tmp_path / "b.yaml", [automation("one")]), "--prune")
    assert "deleted  two" in pruned.stdout
    cli("delete", "one")
    assert listed(cli) == {}
    cli("delete", "one", code=3)


def test_the_change_log_and_snapshot_agree(cli: Any, tmp_path: Path, settings: Settings,
                                           keys: Keys) -> None:
    async def read(after: str) -> tuple[list[str], str, list[AutomationChange]]:
        client = connect(settings)
        try:
            store = AutomationStore(client, keys)
            automations, position = await store.snapshot()
            return [a.name for a in automations], position, await store.read_changes(after)
        finally:
            await client.aclose()

    assert anyio.run(read, "0-0") == ([], "0-0", [])
    cli("apply", write(tmp_path / "a.json", [automation("one")]))
    names, position, changes = anyio.run(read, "0-0")
    assert names == ["one"] and [c.automation.name for c in changes if c.automation] == ["one"]
    assert position == changes[-1].stream_id
