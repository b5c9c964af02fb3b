"""The event model: Prefect 3's grammar, its limits with precise messages, orjson, JSON Schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import orjson
import pytest

from automations.errors import EventTooLarge, InvalidEvent
from automations.events import (
    MAX_EVENT_BYTES,
    Event,
    event_json_schema,
    uuid7,
)

RID = "prefect.resource.id"


def raw(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event": "prefect.flow-run.Completed",
                            "resource": {RID: "prefect.flow-run.1"}}
    return {**base, **overrides}


def test_defaults_fill_id_and_occurred() -> None:
    before = datetime.now(UTC)
    event = Event.parse(raw())
    assert event.id.version == 7
    assert before <= event.occurred <= datetime.now(UTC)
    assert event.related == [] and event.payload == {} and event.follows is None


def test_uuid7_is_time_ordered() -> None:
    ids = [uuid7() for _ in range(50)]
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)
    assert all(i.version == 7 and i.variant == "specified in RFC 4122" for i in ids)


def test_json_round_trip_keeps_everything() -> None:
    event = Event.parse(raw(
        id="0190a000-0000-7000-8000-000000000001",
        occurred="2026-01-02T03:04:05.123456+02:00",
        related=[{RID: "prefect.flow.9", "prefect.resource.role": "flow"}],
        payload={"nested": {"list": [1, 2.5, None, "x"]}},
        follows="0190a000-0000-7000-8000-000000000000",
    ))
    again = Event.from_json(event.to_json())
    assert again == event
    assert again.occurred.utcoffset() == timedelta(hours=2)
    assert orjson.loads(event.to_json())["id"] == "0190a000-0000-7000-8000-000000000001"


def test_naive_time_is_utc_and_unknown_top_level_keys_are_ignored() -> None:
    event = Event.parse(raw(occurred="2026-01-02T03:04:05", received="2026-01-02T03:04:06Z"))
    assert event.occurred == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    minus_five = timezone(timedelta(hours=-5))
    other_zone = Event.parse(raw(occurred=datetime(2026, 1, 2, tzinfo=minus_five)))
    assert other_zone.occurred.utcoffset() == timedelta(hours=-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"event": ""}, "event: String should have at least 1 character"),
        ({"event": "x" * 1025}, "event: String should have at most 1024 characters"),
        ({"resource": {}}, "resource needs a non-empty 'prefect.resource.id' label"),
        ({"resource": {RID: ""}}, "resource needs a non-empty 'prefect.resource.id' label"),
        ({"resource": {RID: "r", "n": 3}}, "resource.n: Input should be a valid string"),
        ({"resource": {RID: "r", **{f"l{i}": "v" for i in range(500)}}},
         "resource has 501 labels; at most 500 are allowed"),
        ({"related": [{RID: "x"}]}, "related[0] needs a non-empty 'prefect.resource.role' label"),
        ({"related": [{"prefect.resource.role": "flow"}]},
         "related[0] needs a non-empty 'prefect.resource.id' label"),
        ({"related": [{RID: f"x{i}", "prefect.resource.role": "r"} for i in range(101)]},
         "related: List should have at most 100 items"),
        ({"id": "nope"}, "id: Input should be a valid UUID"),
        ({"occurred": "yesterday"}, "occurred: Input should be a valid datetime"),
        ({"payload": [1]}, "payload: Input should be a valid dictionary"),
    ],
)
def test_invalid_events_get_precise_messages(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        Event.parse(raw(**overrides))
    assert message in str(err.value)


def test_missing_fields_are_named() -> None:
    with pytest.raises(InvalidEvent) as err:
        Event.parse({})
    assert "event: Field required" in str(err.value)
    assert "resource: Field required" in str(err.value)


def test_size_limit_on_encode_and_decode() -> None:
    big = Event.parse(raw(payload={"blob": "x" * MAX_EVENT_BYTES}))
    with pytest.raises(EventTooLarge, match="at most 1500000 are allowed"):
        big.encoded()
    with pytest.raises(EventTooLarge):
        Event.from_json(big.to_json())
    assert len(Event.parse(raw()).encoded()) < 400


def test_invalid_json_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="Invalid JSON"):
        Event.from_json(b"{not json")


def test_labels_and_related_roles() -> None:
    event = Event.parse(raw(
        resource={RID: "prefect.flow-run.1", "prefect.resource.name": "happy-otter"},
        related=[
            {RID: "prefect.flow.1", "prefect.resource.role": "flow", "prefect.resource.name": "a"},
            {RID: "prefect.flow.2", "prefect.resource.role": "flow", "prefect.resource.name": "b"},
            {RID: "prefect.tag.prod", "prefect.resource.role": "tag"},
        ],
    ))
    assert event.resource_id == "prefect.flow-run.1"
    assert event.label("prefect.resource.name") == "happy-otter"
    assert event.label("related:flow:prefect.resource.name") == "a"  # the first with the role
    assert event.label("related:tag:prefect.resource.id") == "prefect.tag.prod"
    assert event.label("related:deployment:prefect.resource.id") is None
    assert event.label("missing") is None
    assert event.resource_in_role("work-pool") is None


def test_json_schema_export_describes_the_grammar() -> None:
    schema = event_json_schema()
    assert set(schema["required"]) == {"event", "resource"}
    props = schema["properties"]
    assert props["event"]["maxLength"] == 1024
    assert props["id"]["format"] == "uuid"
    assert props["occurred"]["format"] == "date-time"
    assert props["related"]["maxItems"] == 100
    orjson.dumps(schema)  # serialisable as is


def test_ids_compare_as_uuids() -> None:
    event = Event.parse(raw(id=str(UUID(int=5))))
    assert event.id == UUID(int=5)
