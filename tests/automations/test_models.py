"""The Automation model: Prefect's extra fields, and the loop guard (automations.loop_guard)."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from actions.models import DoNothing, RunDeployment
from automations.models import LOOP_ERROR, Automation
from triggers.models import EventTrigger

DEPLOYMENT = "0b6f1a52-6a1f-4f57-bd3c-2c9a6c1d7e10"
NOTIFY = {"type": "send-notification", "urls": ["json://127.0.0.1:9/"], "body": "hi"}
RUN_INFERRED = {"type": "run-deployment", "source": "inferred"}
RUN_SELECTED = {"type": "run-deployment", "deployment_id": DEPLOYMENT}


def automation(trigger: dict[str, Any], actions: list[dict[str, Any]], **extra: Any) -> Automation:
    return Automation.model_validate({"name": "a", "trigger": trigger, "actions": actions, **extra})


def loop_error(trigger: dict[str, Any], actions: list[dict[str, Any]], **extra: Any) -> str:
    with pytest.raises(ValidationError) as info:
        automation(trigger, actions, **extra)
    [error] = info.value.errors(include_url=False)
    assert error["type"] == LOOP_ERROR
    return f"{error['ctx']['path']}: {error['msg']}"


def test_prefect_server_timestamps_are_accepted_and_dropped() -> None:
    a = automation({"expect": ["x"]}, [], created="2026-01-01T00:00:00Z",
                   updated="2026-01-02T00:00:00+00:00")
    dumped = a.model_dump(mode="json")
    assert "created" not in dumped and "updated" not in dumped


def test_owner_resource_is_kept_and_only_written_when_set() -> None:
    owned = automation({"expect": ["x"]}, [], owner_resource="prefect.deployment.1")
    assert owned.model_dump()["owner_resource"] == "prefect.deployment.1"
    assert "owner_resource" not in automation({"expect": ["x"]}, []).model_dump()
    assert "owner_resource" not in automation({"expect": ["x"]}, [], owner_resource=None
                                              ).model_dump_json()


def test_other_unknown_top_level_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"owner\n"):
        automation({"expect": ["x"]}, [], owner="me")


def test_json_round_trip_is_exact() -> None:
    a = automation({"type": "compound", "require": "all", "within": 60, "triggers": [
        {"expect": ["a"], "within": 30, "threshold": 2}, {"expect": ["b"]}]}, [NOTIFY],
        tags=["t"])
    again = Automation.model_validate_json(a.model_dump_json())
    assert again == a


# -- loop guard: refused ------------------------------------------------------------------


def test_an_empty_trigger_re_triggers_on_its_own_triggered_event_even_without_actions() -> None:
    message = loop_error({}, [])
    assert message.startswith("trigger: loop guard")
    assert "prefect.automation.triggered" in message


def test_an_empty_trigger_with_an_action_names_the_action_events() -> None:
    message = loop_error({"posture": "Reactive"}, [NOTIFY])
    assert "action.triggered event of action 0 (send-notification)" in message
    assert "!prefect.automation.*" in message  # the way out is in the message


@pytest.mark.parametrize("expect", [["prefect.flow-run.*"], ["prefect.flow-run.Scheduled"],
                                    ["prefect.flow-run.Running"], ["*"], ["prefect.*"]])
def test_run_deployment_inferred_on_run_states_it_causes_loops(expect: list[str]) -> None:
    assert "run-deployment" in loop_error({"expect": expect}, [RUN_INFERRED])


def test_inferred_run_deployment_loops_whatever_the_related_filters() -> None:
    trigger = {"expect": ["prefect.flow-run.Running"],
               "match_related": {"prefect.resource.role": "tag",
                                 "prefect.resource.id": "prefect.tag.x"}}
    assert "run-deployment" in loop_error(trigger, [RUN_INFERRED])


@pytest.mark.parametrize("match", [{}, {"prefect.resource.id": "prefect.flow-run.*"}])
def test_run_deployment_selected_without_narrowing_loops(match: dict[str, Any]) -> None:
    assert "Scheduled" in loop_error({"expect": ["prefect.flow-run.*"], "match": match},
                                     [RUN_SELECTED])


def test_run_deployment_selected_matching_its_own_deployment_loops() -> None:
    trigger = {"expect": ["prefect.flow-run.Pending"], "match_related": {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": f"prefect.deployment.{DEPLOYMENT}"}}
    assert "Pending" in loop_error(trigger, [RUN_SELECTED])


def test_a_trigger_on_its_own_automation_id_loops() -> None:
    me = uuid4()
    trigger = {"expect": ["prefect.automation.triggered"],
               "match": {"prefect.resource.id": f"prefect.automation.{me}"}}
    assert "triggered" in loop_error(trigger, [], id=str(me))


def test_action_outcome_events_of_its_own_actions_loop() -> None:
    trigger = {"expect": ["prefect.automation.action.failed"]}
    assert "executed/failed event of action 0" in loop_error(trigger, [NOTIFY])


def test_change_flow_run_state_into_the_state_it_watches_loops() -> None:
    trigger = {"expect": ["prefect.flow-run.Failed"]}
    assert "acts on" in loop_error(trigger, [{"type": "change-flow-run-state", "state": "FAILED",
                                              "force": True}])


def test_compound_any_with_one_looping_child_loops_and_points_at_it() -> None:
    trigger = {"type": "compound", "require": "any", "triggers": [{"expect": ["x"]}, {}]}
    assert loop_error(trigger, []).startswith("trigger.triggers[1]: ")


def test_compound_all_loops_only_when_every_child_loops() -> None:
    trigger = {"type": "compound", "require": "all", "triggers": [{}, {"expect": ["prefect.*"]}]}
    assert loop_error(trigger, []).startswith(
        "trigger (through trigger.triggers[0], trigger.triggers[1]): ")
    automation({"type": "compound", "require": "all", "triggers": [{}, {"expect": ["x"]}]}, [])


def test_actions_on_trigger_count_too() -> None:
    loop_error({"expect": ["prefect.automation.action.*"]}, [],
               actions_on_trigger=[{"type": "do-nothing"}])


def test_python_construction_is_guarded_too() -> None:
    with pytest.raises(ValidationError, match="loop guard"):
        Automation(name="a", trigger=EventTrigger(expect={"prefect.flow-run.*"}),
                   actions=[RunDeployment(source="inferred")])


# -- loop guard: accepted -----------------------------------------------------------------


@pytest.mark.parametrize(("trigger", "actions"), [
    ({"expect": ["prefect.flow-run.Failed"]}, [RUN_INFERRED]),  # not a state a new run enters
    ({"expect": ["prefect.flow-run.*"]}, [NOTIFY]),  # notifications emit no flow-run events
    ({"match": {"prefect.resource.id": "!prefect.automation.*"}}, [NOTIFY]),  # the escape hatch
    ({"expect": ["prefect.flow-run.*"], "match_related": {  # narrowed to another flow
        "prefect.resource.role": "flow", "prefect.resource.name": "etl"}}, [RUN_SELECTED]),
    ({"expect": ["prefect.flow-run.*"], "match_related": {  # narrowed to another deployment
        "prefect.resource.role": "deployment", "prefect.resource.id": "prefect.deployment.other"}},
     [RUN_SELECTED]),
    ({"expect": ["prefect.automation.triggered"],  # another automation's events
      "match": {"prefect.resource.id": f"prefect.automation.{uuid4()}"}}, [NOTIFY]),
    ({"posture": "Proactive", "within": 60}, [NOTIFY]),  # fires on absence, not on events
    ({"threshold": 10}, [NOTIFY]),  # one firing makes 3 events, fewer than the threshold
    ({"after": ["never.emitted"]}, [NOTIFY]),  # own events never open a window
    ({"expect": ["prefect.flow-run.*"], "match": {"prefect.state-type": "RUNNING"}},
     [{"type": "cancel-flow-run"}]),  # the run moves to CANCELLING, which is not matched
])
def test_automations_that_cannot_re_trigger_themselves_are_accepted(
    trigger: dict[str, Any], actions: list[dict[str, Any]]
) -> None:
    automation(trigger, actions)


def test_a_disabled_automation_is_not_checked_until_enabled() -> None:
    paused = automation({}, [NOTIFY], enabled=False)
    with pytest.raises(ValidationError, match="loop guard"):
        Automation.model_validate({**paused.model_dump(), "enabled": True})


def test_all_actions_lists_every_action_in_order() -> None:
    a = automation({"expect": ["x"]}, [NOTIFY], actions_on_trigger=[{"type": "do-nothing"}])
    assert [x.type for x in a.all_actions()] == ["send-notification", "do-nothing"]
    assert isinstance(a.all_actions()[1], DoNothing)
