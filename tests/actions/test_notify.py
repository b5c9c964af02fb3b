"""send-notification through Apprise to real local targets: JSON over HTTP, email over SMTP,
and Slack's own payload to a sink standing in for hooks.slack.com."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from actions.models import SendNotification
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import Keys
from automations.store import AutomationStore
from tests.actions.stories import action_events, automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response, SmtpSink

SUBJECT = "Disk full on {{ event.resource.name }}"
BODY = "{{ event.payload.free_mb }} MB left ({{ automation.name }})"

SLACK_URL = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7/#ops"


async def test_json_notification_rendered(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    note = SendNotification(subject=SUBJECT, body=BODY, urls=[http_sink.url("/n", "json")])
    [a] = await stored(store, automation(note))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    [request] = http_sink.received("/n")
    assert request.json()["title"] == "Disk full on db1"
    assert request.json()["message"] == "12 MB left (storm)"
    executed = (await action_events(redis, keys))[-1]
    assert executed["event"] == "prefect.automation.action.executed"
    assert executed["payload"]["delivered"] == 1
    assert executed["payload"]["targets"][0]["status"] == "delivered"


async def test_email_arrives_with_rendered_subject_and_body(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    smtp_sink: SmtpSink,
) -> None:
    note = SendNotification(subject=SUBJECT, body=BODY, urls=[smtp_sink.mailto()])
    [a] = await stored(store, automation(note))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    [mail] = await smtp_sink.wait_for(1)
    assert mail.subject == "Disk full on db1"
    assert "12 MB left (storm)" in mail.text
    assert mail.recipients == ["ops@example.com"]


async def test_slack_payload_reaches_the_sink(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    # Apprise's Slack plugin posts to its ``webhook_url`` attribute (hooks.slack.com/services);
    # the pooled plugin object is pointed at the sink, so the real Slack payload is checked.
    slack: Any = dispatcher.clients.notifiers.get(SLACK_URL)[0]
    slack.webhook_url = http_sink.url("/services")
    note = SendNotification(subject=SUBJECT, body=BODY, urls=[SLACK_URL])
    [a] = await stored(store, automation(note))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    [request] = http_sink.received("/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7")
    payload = request.json()
    assert payload["channel"] == "#ops"
    [attachment] = payload["attachments"]
    assert attachment["title"] == "Disk full on db1"
    assert attachment["text"] == "12 MB left (storm)"
    events = await action_events(redis, keys)
    assert "TIiajkdnlazkcOXrIdevi7" not in str(events)  # the token is not echoed


async def test_partial_failure_retries_only_the_failed_target(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    http_sink.script("/b", Response(502, b"bad gateway"), Response(200))
    note = SendNotification(body="hi", urls=[http_sink.url("/a", "json"),
                                             http_sink.url("/b", "json")])
    [a] = await stored(store, automation(note))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    assert len(http_sink.received("/a")) == 1
    assert len(http_sink.received("/b")) == 2
    failed, executed = [e for e in await action_events(redis, keys) if "attempt" in e["payload"]]
    assert failed["payload"]["reason"] == "server-error"
    assert "error=502" in failed["payload"]["notification_log"]
    assert [t["status"] for t in failed["payload"]["targets"]] == ["delivered", "failed"]
    assert [t["status"] for t in executed["payload"]["targets"]] == ["already-delivered",
                                                                      "delivered"]


async def test_cooldown_drops_and_counts_then_reports_suppressed(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    note = SendNotification(body="disk full", urls=[http_sink.url("/n", "json")],
                            cooldown_seconds=60)
    [a] = await stored(store, automation(note))
    for _ in range(4):
        await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    assert len(http_sink.received("/n")) == 1
    executed = [e for e in await action_events(redis, keys) if e["event"].endswith("executed")]
    assert sorted(e["payload"]["throttled"] for e in executed) == [0, 1, 1, 1]

    # The cooldown ends: the next notification says how many were suppressed.
    found: Any = await redis.keys(f"{keys.g}:actions:cooldown:*")
    await redis.delete(keys.cooldown(str(a.id), _first_cooldown_target(found)))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    second = http_sink.received("/n")[1].json()["message"]
    assert second == "disk full\n\n(3 similar notifications suppressed by the cooldown)"
    last = (await action_events(redis, keys))[-1]
    assert last["payload"]["targets"][0]["suppressed_before"] == 3


def _first_cooldown_target(found: list[bytes]) -> str:
    [key] = found
    return key.decode().rsplit(":", 1)[1]
