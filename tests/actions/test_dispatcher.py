"""The dispatcher end to end: real Redis, real HTTP deliveries to a local sink."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from uuid import uuid4

import orjson
import redis.asyncio as aioredis

from actions.models import CallWebhook, DoNothing
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import Keys
from automations.store import AutomationStore
from tests.actions.stories import (
    action_events,
    automation,
    dead_letters,
    disk_event,
    fire,
    stored,
)
from tests.sinks import HttpSink, Response
from triggers.firing import Firing, TriggerState


async def test_webhook_delivered_once_with_action_events(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    hook = CallWebhook(url=http_sink.url("/hook"), payload={
        "host": "{{ event.resource.name }}", "free": "{{ event.payload.free_mb }}",
        "automation": "{{ automation.name }}"})
    [a] = await stored(store, automation(hook))
    event = disk_event()
    firing = await fire(redis, keys, a, event)

    assert await dispatcher.drain() == 1

    [request] = http_sink.received("/hook")
    assert request.method == "POST"
    assert request.json() == {"host": "db1", "free": "12", "automation": "storm"}
    assert request.headers["Idempotency-Key"] == f"{firing.id}:0"
    events = await action_events(redis, keys)
    assert [e["event"] for e in events] == ["prefect.automation.action.triggered",
                                            "prefect.automation.action.executed"]
    triggered, executed = events
    assert triggered["resource"]["prefect.resource.id"] == f"prefect.automation.{a.id}"
    assert triggered["resource"]["prefect.trigger-type"] == "event"
    assert triggered["resource"]["prefect.posture"] == "Reactive"
    assert triggered["follows"] == str(event.id)
    assert triggered["payload"]["action_type"] == "call-webhook"
    assert executed["follows"] == triggered["id"]
    assert executed["payload"]["status_code"] == 200
    assert executed["payload"]["response_body"] == "ok"
    roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in executed["related"]}
    assert roles == {"automation-triggered-event":
                     f"prefect.event.{firing.automation_triggered_event_id}",
                     "triggering-event": f"prefect.event.{event.id}"}
    assert await redis.get(keys.done(f"{firing.id}:0")) == b"done"


async def test_redelivered_firing_does_not_repeat_the_effect(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/hook"))))
    firing = await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    await redis.xadd(keys.partition(0).firings, {b"data": firing.to_json()})  # again
    await dispatcher.drain()
    assert len(http_sink.received("/hook")) == 1
    assert dispatcher.counts["skipped"] == 1
    assert len(await action_events(redis, keys)) == 2


async def test_action_lists_and_running_index(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    a = automation(
        CallWebhook(url=http_sink.url("/always"), payload="{{ event.event }}"),
        actions_on_trigger=[CallWebhook(url=http_sink.url("/on-trigger"),
                                        payload="{{ event.event }}")],
        actions_on_resolve=[CallWebhook(url=http_sink.url("/on-resolve"),
                                        payload="{{ event.event }}")],
    )
    [a] = await stored(store, a)
    triggered = await fire(redis, keys, a, disk_event())
    resolved = await fire(redis, keys, a, disk_event(), states=[TriggerState.Resolved])
    await dispatcher.drain()

    assert [r.text for r in http_sink.received("/always")] == ["disk.full", "disk.full"]
    [on_trigger] = http_sink.received("/on-trigger")
    assert on_trigger.text == "prefect.automation.triggered"
    assert on_trigger.headers["Idempotency-Key"] == f"{triggered.id}:1"
    [on_resolve] = http_sink.received("/on-resolve")
    assert on_resolve.text == "prefect.automation.resolved"
    assert on_resolve.headers["Idempotency-Key"] == f"{resolved.id}:1"


async def test_every_action_gets_its_own_running_index(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    """Two ``actions`` and one ``actions_on_trigger`` are numbered 0, 1, 2: with a gap the
    third would share the second's idempotency key and be skipped as already done."""
    a = automation(
        CallWebhook(url=http_sink.url("/a")), CallWebhook(url=http_sink.url("/b")),
        actions_on_trigger=[CallWebhook(url=http_sink.url("/c"))],
    )
    [a] = await stored(store, a)
    firing = await fire(redis, keys, a, disk_event())

    await dispatcher.drain()

    keys_seen = [http_sink.received(p)[0].headers["Idempotency-Key"] for p in ("/a", "/b", "/c")]
    assert keys_seen == [f"{firing.id}:{i}" for i in range(3)]
    executed = [e["payload"]["action_index"] for e in await action_events(redis, keys)
                if e["event"].endswith(".executed")]
    assert sorted(executed) == [0, 1, 2]


async def test_transient_failures_retry_then_succeed(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    http_sink.script("/flaky", Response(500, b"down"),
                     Response(429, b"slow down", {"Retry-After": "0.3"}), Response(200))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/flaky"))))
    await fire(redis, keys, a, disk_event())

    await dispatcher.drain()

    requests = http_sink.received("/flaky")
    assert len(requests) == 3
    assert requests[2].at - requests[1].at >= 0.3  # Retry-After honoured
    outcomes = [(e["event"].rsplit(".", 1)[1], e["payload"].get("reason"),
                 e["payload"].get("will_retry"), e["payload"]["attempt"])
                for e in await action_events(redis, keys) if "attempt" in e["payload"]]
    assert outcomes == [("failed", "server-error", True, 1), ("failed", "rate-limited", True, 2),
                        ("executed", None, None, 3)]
    assert await dead_letters(redis, keys) == []
    assert await dispatcher.retries.pending() == 0


async def test_give_up_goes_to_dead_letter(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    http_sink.script("/down", Response(503, b"maintenance"))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/down"))))
    firing = await fire(redis, keys, a, disk_event())

    await dispatcher.drain()

    assert len(http_sink.received("/down")) == 3  # action_max_attempts
    [dead] = await dead_letters(redis, keys)
    assert dead["reason"].startswith("server-error: webhook returned 503")
    assert dead["action_index"] == "0" and dead["attempts"] == "3"
    assert dead["idempotency_key"] == f"{firing.id}:0"
    last = (await action_events(redis, keys))[-1]
    assert last["event"] == "prefect.automation.action.failed"
    assert last["payload"]["will_retry"] is False
    assert last["payload"]["response_body"] == "maintenance"
    assert await redis.get(keys.done(f"{firing.id}:0")) == b"gave-up"


async def test_permanent_failure_is_not_retried(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    http_sink.script("/bad", Response(400, b"bad request"))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/bad"))))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    assert len(http_sink.received("/bad")) == 1
    [dead] = await dead_letters(redis, keys)
    assert dead["reason"].startswith("http-client-error: webhook returned 400 Bad Request")


async def test_template_error_fails_at_once_with_the_error(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    broken = CallWebhook(url=http_sink.url("/t"), payload="{{ event.payload.free_mb / 0 }}")
    [a] = await stored(store, automation(broken))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    assert http_sink.received("/t") == []
    failed = (await action_events(redis, keys))[-1]
    assert failed["payload"]["reason"] == "template"
    assert "division by zero" in failed["payload"]["template_error"]
    assert failed["payload"]["template_source"] == "{{ event.payload.free_mb / 0 }}"
    assert failed["payload"]["message"].startswith("Template rendering failed: payload")


async def test_bad_entries_are_dead_lettered_and_do_not_stop_the_batch(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(DoNothing()))
    await redis.xadd(keys.partition(0).firings, {b"data": b"{not json"})
    await redis.xadd(keys.partition(0).firings, {b"other": b"x"})
    deleted = automation(DoNothing(), name="deleted")  # never stored
    await fire(redis, keys, deleted, disk_event())
    broken = Firing(automation_id=a.id, trigger_id=a.trigger.id, triggered=datetime.now(UTC),
                    triggering_event={"event": "no resource"})
    await redis.xadd(keys.partition(0).firings, {b"data": broken.to_json()})
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    reasons = sorted(d["reason"].split(":")[0] for d in await dead_letters(redis, keys))
    assert reasons == ["automation " + str(deleted.id) + " does not exist (deleted after it fired)",
                       "firing entry has no 'firings' or 'data' field", "invalid firing",
                       "invalid firing"]
    assert dispatcher.counts["executed"] == 1


async def test_an_invalid_firing_is_dead_lettered_with_the_field_path(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(DoNothing()))
    firing = await fire(redis, keys, a, disk_event())
    broken = orjson.loads(firing.to_json()) | {"triggering_event": [1]}
    await redis.xadd(keys.partition(0).firings, {b"data": orjson.dumps(broken)})

    await dispatcher.drain()

    [dead] = await dead_letters(redis, keys)
    assert dead["reason"].startswith("invalid firing: triggering_event: ")
    assert dispatcher.counts["executed"] == 1


async def test_slow_target_times_out_and_does_not_block_other_firings(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    http_sink.script("/slow", Response(200, delay=5))
    slow = automation(CallWebhook(url=http_sink.url("/slow"), timeout_seconds=0.3), name="slow")
    fast = automation(CallWebhook(url=http_sink.url("/fast")), name="fast")
    a_slow, a_fast = await stored(store, slow, fast)
    await fire(redis, keys, a_slow, disk_event())
    await fire(redis, keys, a_fast, disk_event())
    started = time.monotonic()
    await dispatcher.drain(wait_retries=False)
    assert time.monotonic() - started < 2
    assert len(http_sink.received("/fast")) == 1
    failed = [e for e in await action_events(redis, keys)
              if e["event"].endswith(".failed")]
    assert failed[0]["payload"]["reason"] == "timeout"
    assert failed[0]["payload"]["will_retry"] is True
    assert await dispatcher.retries.pending() == 1


async def test_an_engine_entry_runs_each_of_its_firings(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    """The engine's outbox entry holds the event once and several firings: each runs with that
    event; one that cannot run is dead-lettered alone, as a replayable ``data`` firing."""
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/a")), name="a"))
    deleted = automation(DoNothing(), name="deleted")  # never stored
    e = disk_event()
    now = datetime.now(UTC).isoformat()
    compact = [{"id": str(uuid4()), "automation_id": str(x.id), "trigger_id": str(x.trigger.id),
                "triggered": now} for x in (a, deleted)]
    await redis.xadd(keys.partition(0).firings, {b"firings": orjson.dumps(compact),
                                                 b"event": e.to_json(),
                                                 b"event_id": str(e.id).encode()})
    await dispatcher.drain()
    [request] = http_sink.requests
    assert request.path == "/a"
    [dead] = await dead_letters(redis, keys)
    assert dead["reason"].startswith(f"automation {deleted.id} does not exist")
    replay = Firing.from_json(dead["data"])
    assert replay.automation_id == deleted.id
    assert replay.triggering_event is not None and replay.triggering_event["id"] == str(e.id)
    assert dispatcher.counts["executed"] == 1
