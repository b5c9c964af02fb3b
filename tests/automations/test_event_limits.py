"""One set of event limits at every entry point, so nothing the engine accepts fails later:
nesting depth (emit(), ``emit --file``'s parser, a raw XADD) and an announcement that must
hold an event just under the size limit."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from automations.engine.intake import decode_event
from automations.engine.outbox import embeddable
from automations.errors import InvalidEvent
from automations.events import MAX_EVENT_BYTES, MAX_PAYLOAD_DEPTH, TOO_DEEP, Event, nesting
from automations.streams.publish import build_event
from tests.automations.engine_harness import Harness, at, automation, event
from triggers.index import TriggerIndex

FAILED = "prefect.flow-run.Failed"


def deep(levels: int) -> dict[str, Any]:
    """A payload of exactly ``levels`` nested objects."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def raw_event(payload_json: str, name: str = FAILED) -> bytes:
    return (
        '{"id":"0190d0a4-9c3e-7000-8000-000000000001","occurred":"2026-01-01T12:00:00Z",'
        f'"event":"{name}","resource":{{"prefect.resource.id":"r1"}},"payload":{payload_json}}}'
    ).encode()


def nested_json(levels: int) -> str:
    return '{"a":' * (levels - 1) + '{"leaf":1}' + "}" * (levels - 1)


def test_nesting_counts_levels_and_stops_past_the_limit() -> None:
    assert nesting(1, 5) == 0
    assert nesting({"a": [1, {"b": []}]}, 5) == 4
    assert nesting(deep(40), 10) == 11  # stopped one past the limit


@pytest.mark.parametrize("levels", [MAX_PAYLOAD_DEPTH + 1, 300])
def test_emit_refuses_a_too_deep_payload_as_an_invalid_event(levels: int) -> None:
    with pytest.raises(InvalidEvent, match="nests more than 64 levels"):
        build_event(FAILED, resource="r1", payload=deep(levels))
    assert build_event(FAILED, resource="r1", payload=deep(MAX_PAYLOAD_DEPTH)).payload


@pytest.mark.parametrize("levels", [MAX_PAYLOAD_DEPTH + 1, 300, 1100])
def test_the_file_parser_and_the_stream_intake_give_the_same_reason(levels: int) -> None:
    raw = raw_event(nested_json(levels))
    with pytest.raises(InvalidEvent) as parsed:
        Event.from_json(raw)
    assert str(parsed.value) == TOO_DEEP
    index = TriggerIndex()
    index.add(automation({"posture": "Reactive", "expect": [FAILED]}).id,
              automation({"posture": "Reactive", "expect": [FAILED]}).trigger)
    with pytest.raises(InvalidEvent) as decoded:
        decode_event(raw, index)
    assert TOO_DEEP in str(decoded.value)


def test_a_too_deep_event_no_trigger_watches_is_refused_too() -> None:
    raw = raw_event(nested_json(MAX_PAYLOAD_DEPTH + 1), name="nobody.watches.this")
    with pytest.raises(InvalidEvent) as decoded:
        decode_event(raw, TriggerIndex())
    assert str(decoded.value) == TOO_DEEP
    assert decode_event(raw_event(nested_json(MAX_PAYLOAD_DEPTH), name="nobody.watches.this"),
                        TriggerIndex()).event is None  # at the limit: the light path


async def test_a_too_deep_event_is_dead_lettered_alone_and_its_batch_fires(h: Harness) -> None:
    await h.load(automation({"posture": "Reactive", "expect": [FAILED]}))
    await h.redis.xadd(h.keys.events, {"data": raw_event(nested_json(300))})
    good = event(FAILED, 1)
    firings = await h.send(good)
    assert [f.triggering_event and f.triggering_event["id"] for f in firings] == [str(good.id)]
    dead: Any = await h.redis.xrange(h.keys.dead(h.keys.events))
    assert [fields[b"reason"].decode() for _, fields in dead] == [f"invalid event: {TOO_DEEP}"]


def test_an_ordinary_event_is_embedded_whole_without_parsing() -> None:
    raw = event(FAILED, 0).to_json()
    assert embeddable(raw) == (raw, False)
    assert embeddable(None) == (None, False)


async def test_an_event_near_the_size_limit_fires_and_is_announced_cut_down(h: Harness) -> None:
    watcher = automation({"posture": "Reactive", "expect": ["prefect.automation.triggered"],
                          "match": {"prefect.resource.name": "big"}}, name="watcher")
    source = automation({"posture": "Reactive", "expect": [FAILED]}, name="big")
    await h.load(source, watcher)
    big = build_event(FAILED, resource="r1", occurred=at(0),
                      payload={"blob": "x" * (MAX_EVENT_BYTES - 400)})
    assert len(big.encoded()) <= MAX_EVENT_BYTES
    firings = await h.send(big)  # the engine runs until idle: the announcement is evaluated
    fired = {f.automation_id: f for f in firings}
    assert set(fired) == {source.id, watcher.id}
    assert fired[source.id].triggering_event is not None
    [announced] = [e for e in await h.automation_events() if e.resource_id.endswith(str(source.id))]
    assert len(announced.to_json()) <= MAX_EVENT_BYTES
    assert announced.payload["triggering_event_truncated"] is True
    embedded = announced.payload["triggering_event"]
    assert embedded["id"] == str(big.id) and embedded["payload"] == {}
    assert embedded["resource"]["prefect.resource.id"] == "r1"
    assert not await h.redis.xrange(h.keys.dead(h.keys.events))


async def test_an_event_at_the_depth_limit_is_announced_without_its_payload(h: Harness) -> None:
    await h.load(automation({"posture": "Reactive", "expect": [FAILED]}))
    limit = build_event(FAILED, resource="r1", occurred=at(0), payload=deep(MAX_PAYLOAD_DEPTH))
    await h.send(limit)
    [announced] = await h.automation_events()
    assert announced.payload["triggering_event_truncated"] is True
    assert orjson.loads(announced.to_json())["payload"]["triggering_event"]["id"] == str(limit.id)
