"""Why an event did or did not count, and an automation's live state (``automations explain``).

Built on the engine's own code, read only: the engine's per-name plan (``Planner`` over the
automations' ``window_specs``: the same name match, bucket keys and ``for_each`` encoding),
``triggers.explain`` for the per-label verdict (the compiled matchers), ``Window.bucket`` for
the live bucket, the deadlines sorted set the timer reads (the automation's partition's), the
arrivals the engine's ordering keeps (``engine/ordering.py``: was the event taken up) and the
decision log the engine writes (``engine/decisions.py``). What fired, and what its actions
did, comes from ``insight/firings.py``.

Every scan is bounded (``SCAN_*``); what is not found within the bound is reported as such.
Returns the pydantic models of ``insight/explain_models.py`` (the CLI prints them, a console
can serve them as JSON).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import redis.asyncio as aioredis

from automations.engine.decisions import Decision, read_back
from automations.engine.intake import SKIPPED_EVENTS
from automations.engine.ordering import arrived
from automations.engine.plan import Planner, Step
from automations.engine.specs import WindowSpec, immediate, window_specs
from automations.engine.window import T_BUCKET, Bucket, Window
from automations.errors import InvalidEvent, NotFound
from automations.events import Event, from_micros
from automations.insight.explain_models import (
    AutomationState,
    AutomationVerdict,
    BucketState,
    DecisionRef,
    EventExplanation,
    FiringInfo,
    TriggerVerdict,
)
from automations.insight.firings import CHUNK, RECENT, automation_firings, event_firings
from automations.keys import Keys
from automations.models import Automation
from automations.settings import Settings
from triggers.explain import explain_match
from triggers.index import TriggerIndex

SCAN_DECISIONS = 100_000  # decision-log entries searched (newest first)
SCAN_EVENTS = 100_000  # events-stream entries searched for an event id (newest first)
BUCKETS_SHOWN = 50

STREAM_ID = re.compile(r"\d+-\d+")


# -- explain EVENT ------------------------------------------------------------------------


async def explain_event(
    redis: aioredis.Redis, keys: Keys, automations: Sequence[Automation], target: str,
    now: datetime, *, decisions: int = SCAN_DECISIONS, settings: Settings | None = None,
) -> EventExplanation:
    """``target``: an event id or an events-stream entry id. ``NotFound`` when neither the
    decision log (its newest ``decisions`` entries) nor the last ``SCAN_EVENTS`` events hold
    it; ``InvalidEvent`` when ``target`` is neither form. ``settings``: the installation's
    (how long the engine remembers arrivals); the defaults otherwise."""
    notes: list[str] = []
    entry_id, raw, decision = await _locate(redis, keys, target.strip(), decisions)
    event: Event | None = None
    if raw is not None:
        try:
            event = Event.from_json(raw)
        except InvalidEvent as exc:
            notes.append(f"the event is invalid (the engine dead-letters it): {exc}")
    elif decision is not None:
        notes.append("the event is no longer in the events stream (trimmed): "
                     "shown from the decision log only")
    event_id = str(event.id) if event else decision.event_id if decision else None
    name = event.event if event else decision.event if decision else None
    processed = await arrived(redis, keys, event_id, now, settings or _defaults()) \
        if event_id else None
    if name in SKIPPED_EVENTS:
        notes.append(f"{name} events are never evaluated by triggers")
    verdicts = await _verdicts(redis, keys, automations, event, name, decision, entry_id, now)
    if not verdicts and name is not None:
        notes.append(f"no automation has a trigger whose expect or after matches {name!r}")
    elif decision is None and processed:
        notes.append("no decision was logged for it (decision log off, or trimmed): "
                     "counted is evaluated now, against the automations as they are")
    return EventExplanation(
        event_id=event_id, entry_id=entry_id or (decision.entry if decision else None) or None,
        event=name, occurred=event.occurred.isoformat() if event else
        decision.occurred if decision else None,
        logged_at=decision.logged_at if decision else None, processed=processed,
        automations=verdicts, notes=notes,
    )


def is_event_target(target: str) -> bool:
    """Whether ``target`` has the form of an event id (a UUID) or a stream entry id."""
    target = target.strip()
    if STREAM_ID.fullmatch(target):
        return True
    try:
        UUID(target)
    except ValueError:
        return False
    return True


async def _locate(
    redis: aioredis.Redis, keys: Keys, target: str, scan: int = SCAN_DECISIONS
) -> tuple[str | None, bytes | None, Decision | None]:
    """(events-stream entry id, raw event JSON, decision) of ``target``."""
    if STREAM_ID.fullmatch(target):
        found: Any = await redis.xrange(keys.events, min=target, max=target, count=1)
        if not found:
            raise NotFound(f"no entry {target} in the events stream {keys.events}")
        fields = found[0][1]
        event_id = fields.get(b"id", b"").decode()
        decision = await _find_decision(redis, keys, event_id, scan) if event_id else None
        return target, fields.get(b"data"), decision
    try:
        event_id = str(UUID(target))
    except ValueError:
        raise InvalidEvent(f"{target!r} is neither an event id (a UUID) nor a stream entry id "
                           "(like 1767268800000-0)") from None
    decision = await _find_decision(redis, keys, event_id, scan)
    if decision is not None and decision.entry:
        found = await redis.xrange(keys.events, min=decision.entry, max=decision.entry, count=1)
        if found:
            return decision.entry, found[0][1].get(b"data"), decision
    located = await _scan_events(redis, keys, event_id)
    if located is None and decision is None:
        raise NotFound(
            f"event {event_id} not found: not in the decision log (last {scan:,} "
            f"entries) nor in the last {SCAN_EVENTS:,} entries of the events stream")
    entry_id, raw = located if located else (None, None)
    return entry_id, raw, decision


async def _find_decision(redis: aioredis.Redis, keys: Keys, event_id: str,
                         scan: int = SCAN_DECISIONS) -> Decision | None:
    async for decision in read_back(redis, keys, scan=scan, chunk=CHUNK):
        if decision.event_id == event_id:
            return decision
    return None


async def _scan_events(
    redis: aioredis.Redis, keys: Keys, event_id: str
) -> tuple[str, bytes] | None:
    """Newest first, at most ``SCAN_EVENTS`` entries: the entry whose ``id`` field (or, for
    an entry written without one, whose JSON) names ``event_id``."""
    needle, end, left = event_id.encode(), "+", SCAN_EVENTS
    while left > 0:
        entries: Any = await redis.xrevrange(keys.events, max=end, count=min(CHUNK, left))
        for entry_id, fields in entries:
            data = fields.get(b"data", b"")
            if fields.get(b"id", needle if needle in data else b"") == needle:
                return entry_id.decode(), data
        if len(entries) < min(CHUNK, left):
            return None
        left -= len(entries)
        end = "(" + entries[-1][0].decode()
    return None


async def _verdicts(
    redis: aioredis.Redis, keys: Keys, automations: Sequence[Automation], event: Event | None,
    name: str | None, decision: Decision | None, entry_id: str | None, now: datetime,
) -> list[AutomationVerdict]:
    """One verdict per automation that could have cared: a trigger watches the name, or the
    decision log lists it."""
    if name is None:
        return []
    planner, paths = _planner(keys, automations)
    steps: dict[str, list[Step]] = {}
    for step in planner.plan(name).steps:
        steps.setdefault(step.spec.automation_id, []).append(step)
    logged = (*decision.counted, *decision.missed) if decision else ()
    by_id = {str(a.id): a for a in automations}
    firings = await event_firings(redis, keys, event, decision, entry_id)
    window = _window(redis, keys)
    verdicts = []
    for aid in dict.fromkeys([*steps, *logged]):
        triggers = [await _trigger_verdict(window, planner, paths, step, event, now)
                    for step in steps.get(aid, [])] if event else []
        verdicts.append(_verdict(aid, by_id.get(aid), triggers, decision,
                                 [f for f in firings if f.automation_id == aid], aid in steps))
    return sorted(verdicts, key=lambda v: (not v.counted, not v.near_miss, v.automation))


def _verdict(
    aid: str, automation: Automation | None, triggers: list[TriggerVerdict],
    decision: Decision | None, firings: list[FiringInfo], watches: bool,
) -> AutomationVerdict:
    live_counted = any(t.counted for t in triggers)
    source: Literal["decision log", "evaluated now"] = "evaluated now"
    counted = live_counted
    if decision is not None:
        counted, source = aid in decision.counted, "decision log"
    near_miss = not counted and (decision.near_miss(aid, watches) if decision else bool(triggers))
    if automation is not None and not automation.enabled and decision is None:
        counted, near_miss = False, False
        reason = "paused: the engine does not evaluate it"
    else:
        reason = _reason(counted, triggers, decision is not None and counted != live_counted)
    return AutomationVerdict(
        automation=automation.name if automation else f"(deleted) {aid}", automation_id=aid,
        enabled=automation.enabled if automation else False, counted=counted,
        near_miss=near_miss, reason=reason, source=source,
        # a stateless trigger that took the event fired (the engine writes that firing itself)
        fired=bool(firings) or (decision is not None and aid in decision.immediate),
        firings=firings, triggers=triggers,
    )


def _reason(counted: bool, triggers: list[TriggerVerdict], changed: bool) -> str:
    if not triggers:
        return ("counted" if counted else "near miss") + " (its trigger changed since)"
    chosen = [t for t in triggers if t.counted == counted] or triggers
    text = "; ".join(_trigger_reason(t) for t in chosen)
    if changed:
        text += " (the engine decided otherwise when it processed the event: the automation "\
            "changed since)"
    return text


def _trigger_reason(t: TriggerVerdict) -> str:
    where = "" if t.path == "trigger" else f"{t.path}: "
    if not t.counted or t.stateless:
        return where + t.reason + (" (fires on every such event)" if t.stateless else "")
    b = t.bucket
    if b is None:
        return where + t.reason + "; no open window now"
    return (f"{where}{t.reason}; bucket {b.count}/{t.threshold} in [{b.start.isoformat()}, "
            f"{b.end.isoformat()})")


async def _trigger_verdict(
    window: Window, planner: Planner, paths: dict[tuple[str, str], str], step: Step,
    event: Event, now: datetime,
) -> TriggerVerdict:
    spec = step.spec
    trigger = spec.trigger
    match = explain_match(trigger, event)
    stateless = immediate(trigger)
    verdict = TriggerVerdict(
        trigger_id=spec.trigger_id, path=paths[spec.automation_id, spec.trigger_id],
        posture=trigger.posture.value, threshold=trigger.threshold,
        within_s=trigger.within.total_seconds(), counted=match.covers, reason=match.reason(),
        names=list(match.names), labels=list(match.labels), stateless=stateless,
    )
    if match.covers and not stateless:
        template = step.template or step.keyed(*planner.encode(
            step.compiled, step.compiled.bucketing_key_parts(event.resource, event.related)))
        verdict.bucket_key = template[T_BUCKET]
        verdict.bucket = await _bucket_state(window, planner.keys, spec, template[T_BUCKET], now)
    return verdict


# -- explain NAME -------------------------------------------------------------------------


async def explain_automation(
    redis: aioredis.Redis, keys: Keys, automation: Automation, now: datetime, *,
    decisions: int = SCAN_DECISIONS,
) -> AutomationState:
    """Open buckets and proactive deadlines, the last events that counted and the last near
    misses (the newest ``decisions`` entries of the decision log), the last firings (outbox,
    with actions from the history)."""
    aid = str(automation.id)
    specs = window_specs(automation.id, automation.trigger, keys)
    window = _window(redis, keys)
    buckets, more = await _open_buckets(window, keys, aid, specs, now)
    counted: list[DecisionRef] = []
    missed: list[DecisionRef] = []
    scanned = 0
    async for decision in read_back(redis, keys, scan=decisions, chunk=CHUNK):
        scanned += 1
        watches = not decision.missed_all and any(  # only asked of unlisted near misses
            s.trigger.compiled.name_covered(decision.event) for s in specs)
        for hit, found in ((aid in decision.counted, counted),
                           (decision.near_miss(aid, watches), missed)):
            if hit and len(found) < RECENT:
                found.append(_ref(decision))
        if len(counted) >= RECENT and len(missed) >= RECENT:
            break
    notes = []
    if not scanned:
        notes.append("the decision log is empty: no event reached a trigger by name yet, or "
                     "the log is off (AUTOMATIONS_DECISION_LOG=false)")
    if not automation.enabled:
        notes.append("paused: the engine does not evaluate it")
    return AutomationState(
        automation=automation.name, automation_id=aid, enabled=automation.enabled,
        buckets=buckets, more_buckets=more,
        stateless_triggers=[s.trigger_id for s in specs if immediate(s.trigger)],
        counted=counted, near_misses=missed, decisions_scanned=scanned,
        firings=await automation_firings(redis, keys, aid), notes=notes,
    )


def _ref(decision: Decision) -> DecisionRef:
    return DecisionRef(event_id=decision.event_id, event=decision.event,
                       occurred=decision.occurred, entry_id=decision.entry,
                       logged_at=decision.logged_at)


async def _open_buckets(
    window: Window, keys: Keys, aid: str, specs: Sequence[WindowSpec], now: datetime
) -> tuple[list[BucketState], bool]:
    """The automation's buckets (every bucket is in the deadlines set), soonest first."""
    found: list[tuple[str, WindowSpec]] = []
    more = False
    part = keys.of(aid)
    async for member, _ in window.redis.zscan_iter(part.deadlines,
                                                   match=part.bucket(aid, "*", "*"), count=1000):
        key = member.decode()
        spec = next((s for s in specs if key.startswith(part.bucket(aid, s.trigger_id, ""))),
                    None)
        if spec is None:
            continue  # left by an earlier version of the trigger
        if len(found) == BUCKETS_SHOWN:
            more = True
            break
        found.append((key, spec))
    states = [state for key, spec in found
              if (state := await _bucket_state(window, keys, spec, key, now)) is not None]
    return sorted(states, key=lambda b: b.end), more


async def _bucket_state(
    window: Window, keys: Keys, spec: WindowSpec, key: str, now: datetime
) -> BucketState | None:
    """The bucket ``key`` as it is now (``None``: there is none)."""
    bucket: Bucket | None = await window.bucket(key)
    if bucket is None:
        return None
    deadlines = keys.partition(spec.partition).deadlines
    score = await window.redis.zscore(deadlines, key) if spec.proactive else None
    return BucketState(
        trigger_id=spec.trigger_id, key=key, labels=bucket.labels, start=bucket.start,
        end=bucket.end, count=bucket.count, threshold=spec.trigger.threshold,
        posture=spec.trigger.posture.value, open=now < bucket.end,
        deadline=from_micros(float(score)) if score is not None else None,
        last_event_id=bucket.last_event_id,
    )


# -- the engine's own lookups, built read-only -----------------------------------------------


def _planner(
    keys: Keys, automations: Iterable[Automation]
) -> tuple[Planner, dict[tuple[str, str], str]]:
    """The engine's plan for these automations (paused ones too: explain says so), and per
    (automation id, trigger id) the trigger's path in the trigger tree."""
    index = TriggerIndex()
    spec_of: dict[int, WindowSpec] = {}
    paths: dict[tuple[str, str], str] = {}
    for automation in automations:
        index.add(automation.id, automation.trigger)
        for spec, path in zip(window_specs(automation.id, automation.trigger, keys),
                              _paths(automation.trigger, "trigger"), strict=True):
            spec_of[id(spec.trigger)] = spec
            paths[spec.automation_id, spec.trigger_id] = path
    return Planner(keys, index, spec_of.__getitem__), paths


def _paths(trigger: Any, path: str) -> list[str]:
    """The path of every event trigger, in the trigger walk's order (``all_event_triggers``)."""
    if trigger.type == "event":
        return [path]
    return [p for i, child in enumerate(trigger.triggers)
            for p in _paths(child, f"{path}.triggers[{i}]")]


def _window(redis: aioredis.Redis, keys: Keys) -> Window:
    """The engine's bucket reader. Only ``bucket`` is used, which reads no settings: the
    defaults stand in (without reading the environment)."""
    return Window(redis, keys, _defaults())


def _defaults() -> Settings:
    """The default settings, without reading the environment."""
    return Settings.model_construct()
