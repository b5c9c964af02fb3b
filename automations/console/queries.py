"""The console's read side: one function per page, each returning the JSON the API serves
and the page renders, so the two never disagree. Everything is paginated or bounded: a page
reads what it shows (plus ``EVENTS_SCAN`` entries at most when filtering events)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from actions.secrets import MASK, display_url, redact_headers
from automations.cli.automations_cmd import describe_actions, describe_trigger
from automations.console.context import Console
from automations.errors import NotFound
from automations.insight.dead_letters import (
    DeadLetter,
    dead_keys,
    dead_streams,
    family,
    find,
    short_name,
)
from automations.insight.explain import explain_automation, explain_event
from automations.insight.runs import find_run, list_runs, run_json
from automations.keys import Keys
from automations.models import Automation
from automations.runtime.deployments import Deployment
from triggers.matching import glob_match

PAGE = 50
MAX_PAGE = 500
EVENTS_SCAN = 10_000
DECISIONS_SCAN = 10_000
"""Decision-log entries ``explain`` reads for a page (``automations explain`` reads 10x more:
a page must answer in 200 ms at 100,000 decisions)."""
CHUNK = 1000
PREVIEW = 300
ENTRY_ID = re.compile(r"^\d+-\d+$")

Json = dict[str, Any]


def limit_of(value: str | None, default: int = PAGE) -> int:
    """A page size from a query parameter (``ValueError`` for a bad one)."""
    if value in (None, ""):
        return default
    number = int(str(value))
    if not 1 <= number <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    return number


def offset_of(value: str | None) -> int:
    number = int(value) if value not in (None, "") else 0
    if number < 0:
        raise ValueError("offset must be 0 or more")
    return number


# -- automations ---------------------------------------------------------------------------


def summary(automation: Automation, last_fired: str | None, fired_24h: int) -> Json:
    return {"id": str(automation.id), "name": automation.name, "enabled": automation.enabled,
            "description": automation.description,
            "trigger": describe_trigger(automation.trigger),
            "actions": describe_actions(automation), "last_fired": last_fired,
            "fired_24h": fired_24h}


def _redacted(value: Any, key: str = "") -> Any:
    """Inline URLs and sensitive headers masked (block values are never in a definition: an
    action names its block)."""
    if isinstance(value, dict):
        if key == "headers":
            return redact_headers({str(k): str(v) for k, v in value.items()})
        return {k: _redacted(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, key) for v in value]
    if isinstance(value, str) and key.endswith("url") and "{{" not in value:
        return display_url(value)
    if isinstance(value, str) and key in ("password", "token", "secret", "api_key"):
        return MASK
    return value


def definition(automation: Automation) -> Json:
    """The automation as stored, secrets masked."""
    return dict(_redacted(automation.model_dump(mode="json")))


async def automations_page(c: Console, *, q: str = "", offset: int = 0, limit: int = PAGE,
                           now: datetime) -> Json:
    automations = await c.automations.all()
    wanted = q.strip().casefold()
    if wanted:
        automations = [a for a in automations if wanted in a.name.casefold()]
    page = automations[offset:offset + limit]
    last: list[Any] = await c.redis.hmget(c.keys.last_fired, [str(a.id) for a in page]) \
        if page else []
    counts = await c.counts.refresh(now)
    items = [summary(a, _text(fired) if fired else None, counts.get(str(a.id), 0))
             for a, fired in zip(page, last, strict=True)]
    return {"items": items, "total": len(automations), "offset": offset, "limit": limit,
            "q": q}


async def find_automation(c: Console, name_or_id: str) -> Automation:
    found = await c.automations.get(name_or_id)
    if found is None:
        raise NotFound(f"no automation named (or with id) {name_or_id!r}")
    return found


async def automation_detail(c: Console, name_or_id: str, *, now: datetime) -> Json:
    automation = await find_automation(c, name_or_id)
    aid = str(automation.id)
    last: Any = await c.redis.hget(c.keys.last_fired, aid)
    counts = await c.counts.refresh(now)
    state = await explain_automation(c.redis, c.keys, automation, now,
                                     decisions=DECISIONS_SCAN)
    return {"automation": summary(automation, _text(last) if last else None,
                                  counts.get(aid, 0)),
            "definition": definition(automation), "state": state.model_dump(mode="json")}


# -- events --------------------------------------------------------------------------------


def event_filter(name: str, label: str) -> Callable[[Json], bool]:
    """``name``: a glob of the event name (``!`` negates); ``label``: ``key=glob`` on the
    resource (``prefect.resource.id=prefect.flow-run.*``). ``ValueError`` for a bad label."""
    name, label = name.strip(), label.strip()
    key, sep, pattern = label.partition("=")
    if label and (not sep or not key.strip()):
        raise ValueError("label must be key=glob, like prefect.resource.id=prefect.flow-run.*")
    key = key.strip()

    def keep(event: Json) -> bool:
        if name and not glob_match(name, event.get("event")):
            return False
        if label:
            resource = event.get("resource") or {}
            return glob_match(pattern.strip(), resource.get(key)) if \
                isinstance(resource, dict) else False
        return True

    return keep


def event_json(entry_id: Any, fields: Any) -> Json:
    """One events-stream entry as the console shows it (an unreadable one says so)."""
    raw = fields.get(b"data", b"")
    out: Json = {"entry_id": _text(entry_id)}
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except (ValueError, orjson.JSONDecodeError):
        return {**out, "invalid": True, "event": None, "id": _text(fields.get(b"id", b"")),
                "preview": _text(raw)[:PREVIEW]}
    payload = orjson.dumps(data.get("payload", {})).decode()
    resource = data.get("resource") if isinstance(data.get("resource"), dict) else {}
    return {**out, "invalid": False, "id": data.get("id"), "event": data.get("event"),
            "occurred": data.get("occurred"), "resource": resource,
            "resource_id": resource.get("prefect.resource.id") if resource else None,
            "related": len(data.get("related") or []),
            "payload": data.get("payload", {}),
            "preview": payload if len(payload) <= PREVIEW else payload[:PREVIEW - 1] + "…"}


async def events_page(c: Console, *, name: str = "", label: str = "", before: str = "",
                      limit: int = PAGE) -> Json:
    """Newest first, from before the entry ``before``; with a filter, at most ``EVENTS_SCAN``
    entries are looked at per page (``next`` continues the scan)."""
    keep = event_filter(name, label)
    _check_id(before, "before")
    filtering = bool(name.strip() or label.strip())
    high = f"({before}" if before else "+"
    items: list[Json] = []
    scanned, cursor, done = 0, None, False
    while len(items) < limit and scanned < EVENTS_SCAN:
        want = min(CHUNK, EVENTS_SCAN - scanned) if filtering else limit - len(items)
        entries: Any = await c.redis.xrevrange(c.keys.events, max=high, count=want)
        for entry_id, fields in entries:
            scanned += 1
            cursor = _text(entry_id)
            event = event_json(entry_id, fields)
            if keep(event):
                items.append(event)
                if len(items) == limit:
                    break
        if len(entries) < want:
            done = len(items) < limit or cursor is None
            break
        high = f"({_text(entries[-1][0])}"
    length = int(await c.redis.xlen(c.keys.events))
    return {"items": items, "next": None if done else cursor, "scanned": scanned,
            "stream_length": length, "name": name, "label": label, "before": before,
            "limit": limit}


async def event_detail(c: Console, target: str, *, now: datetime) -> Json:
    """Explained against the automations that watch its name (found in the console's name
    index, not by building the engine's plan of every automation per request)."""
    target = target.strip()
    name = None
    if ENTRY_ID.match(target):
        found_name: Any = await c.redis.xrange(c.keys.events, min=target, max=target, count=1)
        if found_name:
            name = event_json(found_name[0][0], found_name[0][1]).get("event")
    automations = await c.automations.watching(name) if isinstance(name, str) else \
        await c.automations.all()
    explanation = await explain_event(c.redis, c.keys, automations, target, now,
                                      decisions=DECISIONS_SCAN, settings=c.settings)
    for verdict in explanation.automations:  # logged for it, no longer watching its name
        known = c.automations.by_id.get(verdict.automation_id)
        if known is not None and verdict.automation.startswith("(deleted) "):
            verdict.automation, verdict.enabled = known.name, known.enabled
    event = None
    if explanation.entry_id:
        found: Any = await c.redis.xrange(c.keys.events, min=explanation.entry_id,
                                          max=explanation.entry_id, count=1)
        if found:
            event = event_json(found[0][0], found[0][1])
    return {"event": event, "explanation": explanation.model_dump(mode="json")}


# -- dead letters --------------------------------------------------------------------------


def letter_json(letter: DeadLetter, keys: Keys, *, full: bool = False) -> Json:
    out = letter.to_json(full=full)
    out["stream"] = short_name(keys, letter.key)
    data = letter.fields.get("data", "")
    out["preview"] = data if len(data) <= PREVIEW else data[:PREVIEW - 1] + "…"
    return out


async def dead_letters_page(c: Console, *, stream: str = "", before: str = "",
                            limit: int = PAGE) -> Json:
    _check_id(before, "before")
    counts = await dead_streams(c.redis, c.keys)
    keys = dead_keys(c.keys, stream) if stream else list(counts)
    high = f"({before}" if before else "+"
    letters: list[DeadLetter] = []
    for key in keys:
        raw: Any = await c.redis.xrevrange(key, max=high, count=limit)
        letters += [DeadLetter(key, _text(i), {_text(k): _text(v) for k, v in f.items()})
                    for i, f in raw]
    letters.sort(key=lambda d: _stream_id(d.id), reverse=True)
    more = len(letters) > limit or (len(letters) == limit and bool(letters))
    letters = letters[:limit]
    streams: dict[str, int] = {}  # the partitions' outboxes merged: "firings"
    for key, n in counts.items():
        name = family(short_name(c.keys, key))
        streams[name] = streams.get(name, 0) + n
    return {"streams": streams,
            "stream": stream, "before": before, "limit": limit,
            "items": [letter_json(d, c.keys) for d in letters],
            "next": letters[-1].id if more and letters else None}


async def dead_letter(c: Console, stream: str, entry_id: str) -> Json:
    letter = await find(c.redis, c.keys, entry_id, stream)
    return letter_json(letter, c.keys, full=True)


# -- deployments and runs ------------------------------------------------------------------


def deployment_json(dep: Deployment) -> Json:
    return {"id": str(dep.id), "name": dep.name, "flow": dep.flow_name,
            "entrypoint": dep.entrypoint, "paused": dep.paused, "tags": dep.tags,
            "description": dep.description, "parameters": dep.parameters,
            "schedules": [{"schedule": s.describe(), "active": s.active}
                          for s in dep.schedules]}


async def deployments_page(c: Console) -> Json:
    return {"items": [deployment_json(d) for d in await c.deployments.all()]}


async def deployment_detail(c: Console, name_or_id: str, *, limit: int = PAGE) -> Json:
    dep = await c.deployments.resolve(name_or_id)
    runs = await list_runs(c.runs, deployment=str(dep.id), limit=limit)
    return {"deployment": deployment_json(dep), "runs": [run_json(r) for r in runs]}


async def runs_page(c: Console, *, deployment: str = "", state: str = "", offset: int = 0,
                    limit: int = PAGE) -> Json:
    runs = await list_runs(c.runs, deployment=deployment or None, state=state or None)
    return {"items": [run_json(r) for r in runs[offset:offset + limit]], "total": len(runs),
            "offset": offset, "limit": limit, "deployment": deployment, "state": state}


async def run_detail(c: Console, run: str) -> Json:
    return run_json(await find_run(c.runs, run), full=True)


def _check_id(value: str, name: str) -> None:
    if value and not ENTRY_ID.match(value):
        raise ValueError(f"{name} must be a stream entry id (like 1712345678901-0)")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
