"""The sandbox, its limits, apply-time checks and the render context."""

from __future__ import annotations

import pytest

from actions.models import CallWebhook, SendNotification
from actions.outcome import PermanentError, Reason
from actions.templating import TemplateEngine, Templates, check_templates
from automations.dispatch.invocation import event_view
from tests.actions.stories import disk_event


async def render(source: str, **context: object) -> str:
    return await Templates(TemplateEngine(), dict(context)).render(source, field="body")


async def test_plain_strings_are_not_rendered() -> None:
    assert await render("{ not a template }") == "{ not a template }"


async def test_unknown_names_render_empty_and_attributes_chain() -> None:
    assert await render("[{{ nothing.at.all }}]") == "[]"


async def test_unsafe_attributes_are_undefined() -> None:
    assert await render("{{ ''.__class__.__mro__ }}{{ automation.__init__.__globals__ }}",
                        automation=object()) == ""


@pytest.mark.parametrize("source", [
    "{{ range(1000) | list }}",
    "{{ 'x' * 1000000 }}",
    "{{ 2 ** 100000 }}",
    "{% for a in range(3) %}{% for b in range(3) %}{% for c in range(3) %}{% endfor %}"
    "{% endfor %}{% endfor %}",
    "{% for i in range(99) %}{{ 'y' * 99 }}{% for j in range(99) %}{{ 'z' * 99 }}{% endfor %}"
    "{% endfor %}",
    "{{ [].append(1) }}",
])
async def test_sandbox_limits_fail_as_template_errors(source: str) -> None:
    with pytest.raises(PermanentError) as caught:
        await render(source)
    assert caught.value.reason is Reason.TEMPLATE
    assert caught.value.details["template_source"] == source


def test_check_templates_reports_field_paths() -> None:
    action = CallWebhook(url="http://127.0.0.1/x", payload={
        "ok": "{{ event.event }}", "nested": {"bad": "{{ event.event "}, "list": ["{% for %}"]})
    problems = check_templates(action)
    assert [p.split(":")[0] for p in problems] == ["payload.nested.bad", "payload.list[0]"]
    too_many = "".join("{% for i in range(2) %}{% endfor %}" for _ in range(11))
    assert check_templates(SendNotification(body=too_many, urls=["json://x"])) == [
        "body: 11 for loops; at most 10 are allowed"]
    assert check_templates(SendNotification(body="{{ labels['a'] }}", urls=["json://x"])) == []


async def test_prefect_filters_render() -> None:
    run = "prefect.flow-run.0b7e5a2e-3f5b-4a4c-9d0e-1c2b3a4d5e6f"
    assert await render("{{ rid | flow_run_id }}", rid=run) == run.rsplit(".", 1)[1]
    assert await render("[{{ flow_run | ui_url }}]", flow_run={"id": 1}) == "[]"
    assert await render("{{ 3725 | humanize_precisedelta }}") == \
        "1 hour, 2 minutes and 5 seconds"
    assert await render("{{ 120 | humanize_naturaltime }}") == "2 minutes ago"
    assert await render("{{ {'a': [1, 2]} | tojson }}") == '{"a":[1,2]}'


async def test_event_view_as_in_prefect() -> None:
    event = disk_event()
    event.related.append({"prefect.resource.id": "prefect.flow-run.1",
                          "prefect.resource.role": "flow-run"})
    source = ("{{ event.resource.id }} {{ event.resource.name }} "
              "{{ event.resource_in_role('flow-run').id }} {{ event.payload.free_mb }}")
    assert await render(source, event=event_view(event)) == "host.db1 db1 prefect.flow-run.1 12"
