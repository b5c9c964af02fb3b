"""Files to automations: JSON, YAML and Python; Prefect exports; every error at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from automations.errors import InvalidAutomation, InvalidAutomations
from automations.field_errors import field_path
from automations.loader import file_schema, load_files, load_sources, parse_document
from automations.models import Automation
from tests.automations.documents import write

PREFECT = Path(__file__).parent.parent / "fixtures" / "prefect"
PREFECT_FILES = sorted(p for p in PREFECT.iterdir() if p.suffix in {".json", ".yaml"})

GOOD = {"name": "good", "trigger": {"expect": ["a.b"]}, "actions": [{"type": "do-nothing"}]}


def errors_of(*paths: Path) -> list[str]:
    with pytest.raises(InvalidAutomations) as info:
        load_files(paths)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize("path", PREFECT_FILES, ids=lambda p: p.name)
def test_prefect_exports_load_unchanged(path: Path) -> None:
    loaded = load_files([path])
    assert loaded
    document = orjson.loads(path.read_bytes()) if path.suffix == ".json" else yaml.safe_load(
        path.read_text())
    items = document["automations"] if isinstance(document, dict) and "automations" in document \
        else document if isinstance(document, list) else [document]
    for raw, automation in zip(items, loaded, strict=True):
        assert automation.name == raw["name"]
        if "id" in raw:
            assert str(automation.id) == raw["id"]  # Prefect's id is kept


def test_reference_examples_keep_their_meaning() -> None:
    [threshold] = load_files([PREFECT / "reference-4.4.json"])
    trigger = threshold.trigger
    assert trigger.type == "event"
    assert trigger.threshold == 3 and trigger.within.total_seconds() == 600
    assert trigger.for_each == {"related:deployment:prefect.resource.id"}
    assert len(trigger.match_related_specs) == 2
    [compound] = load_files([PREFECT / "reference-4.5.json"])
    assert compound.trigger.type == "compound" and compound.trigger.needed == 2
    assert compound.actions[0].type == "run-deployment"


def test_an_inspect_export_round_trips_through_our_json(tmp_path: Path) -> None:
    [original] = load_files([PREFECT / "inspect-by-name-proactive.json"])
    again = write(tmp_path / "again.json", original.model_dump(mode="json"))
    assert load_files([again]) == [original]


def test_python_json_yaml_round_trip(tmp_path: Path) -> None:
    module = tmp_path / "defs.py"
    module.write_text(
        "from automations import Automation\n"
        "from triggers import EventTrigger, CompoundTrigger\n"
        "from actions import CallWebhook, DoNothing\n"
        "alert = Automation(name='alert', tags=['x'], trigger=EventTrigger(\n"
        "    expect={'prefect.flow-run.Failed'}, for_each={'prefect.resource.id'},\n"
        "    threshold=2, within=60),\n"
        "    actions=[CallWebhook(url='http://127.0.0.1:9/hook',\n"
        "                         payload={'n': '{{ event.id }}'})])\n"
        "more = [Automation(name='both', trigger=CompoundTrigger(require='all', within=30,\n"
        "    triggers=[EventTrigger(expect={'a'}), EventTrigger(expect={'b'})]),\n"
        "    actions=[DoNothing()])]\n"
        "by_name = {'same': alert}\n"
    )
    from_python = load_files([module])
    assert [a.name for a in from_python] == ["alert", "both"]  # the dict's alias counted once
    as_json = write(tmp_path / "defs.json", [a.model_dump(mode="json") for a in from_python])
    from_json = load_files([as_json])
    as_yaml = write(tmp_path / "defs.yaml", {"automations": [a.model_dump(mode="json")
                                                            for a in from_json]})
    assert load_files([as_yaml]) == from_json == from_python


def test_one_automation_a_list_and_the_wrapped_form_with_schema(tmp_path: Path) -> None:
    single = write(tmp_path / "one.yaml", GOOD)
    listed = write(tmp_path / "list.json", [{**GOOD, "name": "l1"}, {**GOOD, "name": "l2"}])
    wrapped = write(tmp_path / "w.yml", {"$schema": "./schema.json",
                                         "automations": [{**GOOD, "name": "w"}]})
    sources = load_sources([single, listed, wrapped])
    assert [(s.automation.name, s.path) for s in sources] == [
        ("good", ""), ("l1", "[0]"), ("l2", "[1]"), ("w", "automations[0]")]


def test_every_error_of_every_item_is_reported_with_file_and_path(tmp_path: Path) -> None:
    document = {"automations": [
        GOOD,
        {"name": "bad-compound", "trigger": {"type": "compound", "require": "all", "triggers": [
            {"expect": ["a"]}, {"expect": ["b"], "within": -5}]}, "actions": []},
        {"name": "typo", "trigger": {"expect": ["a"], "within_seconds": 30},
         "actions": [{"type": "send-notification"}, {"type": "explode"}]},
        {"name": "short-proactive", "trigger": {"posture": "Proactive", "within": 3},
         "actions": [], "colour": "red"},
        {"name": "labels", "trigger": {"match": {"prefect.resource.id": 5}}, "actions": []},
    ]}
    path = write(tmp_path / "many.yaml", document)
    errors = errors_of(path)
    where = f"{path}:automations"
    assert f"{where}[1].trigger.triggers[1].within: Input should be greater than or equal" \
        in errors[0]
    assert errors[0].endswith("(automation 'bad-compound')")
    assert any(e.startswith(f"{where}[2].trigger.within_seconds: unknown key") for e in errors)
    assert any(e.startswith(f"{where}[2].actions[0].body: Field required") for e in errors)
    assert any(e.startswith(f"{where}[2].actions[1]: Input tag 'explode'") for e in errors)
    assert any(e.startswith(f"{where}[3].trigger.within: a Proactive trigger needs within >= 10")
               for e in errors)
    assert any(e.startswith(f"{where}[3].colour: unknown key") for e in errors)
    assert f'{where}[4].trigger.match["prefect.resource.id"]: Input should be a valid string ' \
        "or Input should be a valid list (automation 'labels')" in errors
    assert len(errors) >= 7


def test_an_error_in_one_file_means_nothing_is_returned(tmp_path: Path) -> None:
    good = write(tmp_path / "good.json", GOOD)
    bad = write(tmp_path / "bad.json", {**GOOD, "name": "bad", "actions": "nope"})
    errors = errors_of(good, bad)
    assert errors == [f"{bad}:actions: Input should be a valid list (automation 'bad')"]


def test_the_loop_guard_error_names_the_looping_trigger(tmp_path: Path) -> None:
    path = write(tmp_path / "loop.json", [GOOD, {"name": "loop", "trigger": {
        "type": "sequence", "triggers": [{}, {}]}, "actions": [{"type": "do-nothing"}]}])
    [error] = errors_of(path)
    assert error.startswith(f"{path}:[1].trigger (through trigger.triggers[0], "
                            "trigger.triggers[1]): loop guard: ")


def test_template_errors_are_refused_at_load_time(tmp_path: Path) -> None:
    path = write(tmp_path / "t.json", {**GOOD, "actions": [{
        "type": "send-notification", "urls": ["json://127.0.0.1:9/"], "body": "{{ oops"}]})
    [error] = errors_of(path)
    assert error.startswith(f"{path}:actions[0].body: template error: ")


def test_names_and_explicit_ids_are_unique_across_files(tmp_path: Path) -> None:
    ident = "00000000-0000-4000-8000-000000000001"
    first = write(tmp_path / "a.json", {**GOOD, "id": ident})
    second = write(tmp_path / "b.yaml", [GOOD, {**GOOD, "name": "other", "id": ident}])
    errors = errors_of(first, second)
    assert errors == [
        f"{second}:[0].name: duplicate name 'good' (also at {first}); names must be unique",
        f"{second}:[1].id: duplicate id {ident} (also at {first})",
    ]


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("bad.json", "{", "invalid JSON: "),
    ("bad.yaml", "a: [1, 2\nb: 3", "invalid YAML: line 2, column 2: "),
    ("empty.yaml", "", "expected an automation, a list of them or"),
    ("scalar.json", "42", "got a int"),
    ("items.json", "[1]", "[0]: expected an automation (a mapping), got int"),
    ("wrapped.json", '{"automations": {}}', "automations: must be a list of automations"),
    ("defs.toml", "", "unsupported file type"),
    ("dup.yaml", "name: a\ntrigger: {within: 1, within: 2}\n",
     "invalid YAML: line 2, column 22: duplicate key 'within'"),
    ("dup.json", '{"name": "a", "name": "b"}', "invalid JSON: duplicate key 'name'"),
    ("key.yaml", "? [a]\n: 1\n", "invalid YAML: "),
])
def test_unreadable_files_get_one_clear_error(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    [error] = errors_of(path)
    assert error.startswith(f"{path}:") and expected in error


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.json") == [f"{tmp_path / 'nope.json'}: no such file"]


def test_python_module_errors_point_at_the_line(tmp_path: Path) -> None:
    invalid = tmp_path / "invalid.py"
    invalid.write_text("from automations import Automation\n\n"
                       "a = Automation(name='x', trigger={'within': -1}, actions=[])\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import json\nraise RuntimeError('boom')\n")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    errors = errors_of(invalid, broken, empty)
    assert errors[0].startswith(f"{invalid}:3:trigger.within: Input should be greater")
    assert errors[1] == f"{broken}:2: import failed: RuntimeError: boom"
    assert errors[2] == f"{empty}: defines no Automation objects"


def test_a_python_file_that_exits_is_an_error_not_an_exit(tmp_path: Path) -> None:
    quits = tmp_path / "quits.py"
    quits.write_text("import sys\n\nsys.exit(3)\n")
    good = write(tmp_path / "good.yaml", GOOD)
    errors = errors_of(quits, good)
    assert errors == [f"{quits}:3: the file raised SystemExit(3) while loading (sys.exit() or "
                      "exit()); an automations file must define automations, not exit"]


def test_a_python_automation_with_a_template_error_still_counts_for_duplicates(
    tmp_path: Path,
) -> None:
    module = tmp_path / "defs.py"
    module.write_text("from automations import Automation\n"
                      "from actions.models import SendNotification\n"
                      "a = Automation(name='good', trigger={'expect': ['x']}, actions=["
                      "SendNotification(urls=['json://127.0.0.1:9/'], body='{{ x }')])\n")
    errors = errors_of(module, write(tmp_path / "b.yaml", GOOD))
    assert errors[0].startswith(f"{module}:a.actions[0].body: template error:")
    assert errors[1].startswith(f"{tmp_path / 'b.yaml'}:name: duplicate name 'good'")


def test_python_modules_can_import_their_siblings(tmp_path: Path) -> None:
    (tmp_path / "common.py").write_text("EXPECT = {'sibling.event'}\n")
    module = tmp_path / "defs.py"
    module.write_text("from common import EXPECT\nfrom automations import Automation\n"
                      "from triggers import EventTrigger\n"
                      "a = Automation(name='s', trigger=EventTrigger(expect=EXPECT), actions=[])\n")
    [loaded] = load_files([module])
    assert loaded.trigger.expect == {"sibling.event"}


def test_parse_document_raises_one_error_per_problem() -> None:
    with pytest.raises(InvalidAutomation, match="name: String should have at least 1"):
        parse_document({**GOOD, "name": ""})
    assert [a.name for a in parse_document([GOOD])] == ["good"]


@pytest.mark.parametrize(("loc", "expected"), [
    (("trigger", "compound", "triggers", 1, "event", "within"), "trigger.triggers[1].within"),
    (("trigger", "sequence", "triggers", 0, "compound", "triggers", 2, "event"),
     "trigger.triggers[0].triggers[2]"),
    (("actions", 0, "send-notification", "body"), "actions[0].body"),
    (("trigger", "event", "match", "prefect.resource.id", 0),
     'trigger.match["prefect.resource.id"][0]'),
    (("tags", 3), "tags[3]"),
])
def test_field_paths_drop_union_tags(loc: tuple[Any, ...], expected: str) -> None:
    assert field_path(loc) == expected


def test_the_file_schema_covers_all_three_forms() -> None:
    schema = file_schema()
    assert {"Automation", "AutomationsDocument", "EventTrigger", "CompoundTrigger"} <= set(
        schema["$defs"])
    assert len(schema["anyOf"]) == 3
    assert Automation.model_json_schema()["additionalProperties"] is False


def test_a_directory_stands_for_its_automation_files(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", [{**GOOD, "name": "from-yaml"}])
    write(tmp_path / "a.json", {**GOOD, "name": "from-json"})
    (tmp_path / "helpers.py").write_text("PREFIX = 'x'\n")  # no automations: fine in a dir
    (tmp_path / "_private.json").write_text("not json")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [a.name for a in load_files([tmp_path])] == ["from-json", "from-yaml"]


def test_yaml_anchors_merge_from_x_keys(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "x-defaults: &defaults\n  actions: [{type: do-nothing}]\n  tags: [team-a]\n"
        "automations:\n"
        "  - <<: *defaults\n    name: one\n    trigger: {expect: [a]}\n"
        "  - <<: *defaults\n    name: two\n    trigger: {expect: [b]}\n")
    loaded = load_files([path])
    assert [(a.name, a.tags, len(a.actions)) for a in loaded] == [
        ("one", ["team-a"], 1), ("two", ["team-a"], 1)]
    schema = file_schema()["$defs"]["AutomationsDocument"]
    assert "^x-" in schema["patternProperties"]
