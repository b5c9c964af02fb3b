"""Window specs: how one event trigger, with its composite ancestors, is described to Lua.

An automation's trigger tree is flattened into one ``WindowSpec`` per event trigger. Its
``json`` carries what the window scripts need: posture, threshold, window length, whether
``after``/``for_each`` are set, the firing and ``prefect.automation.triggered`` fragments,
and the ``chain`` of composite parents (innermost first). A child's firing climbs that chain
inside the same script: each parent keeps the latest firing per child in the hash
``keys.composite(automation, parent)``, expires old ones (``within``, wall clock), checks
``any``/``all``/N or the sequence order and clears the hash when it fires (check-and-clear
is atomic because it is part of the script). Child labels are merged into the parent firing.

The spec JSON, short because every script call decodes the specs its ops use (the timer
reads the same JSON from ``keys.trigger_specs``, the global windows from
``keys.proactive_globals``; a call's copy, ``call_json``, leaves out ``ix``, which only the
timer reads, and an empty ``ch``, and names its links by ref: the siblings of a composite
share them, and a call sends each once, see ``WindowSpec.links``):

- ``a`` automation id, ``t`` trigger id, ``ix`` position in the automation's trigger walk
- ``p`` 1 Proactive, 0 Reactive; ``th`` threshold; ``w`` within (us)
- ``af`` 1 when ``after`` is set; ``fe`` 1 when ``for_each`` is set
- ``im`` 1 when immediate (``immediate``: fires on every covered event, keeps no bucket)
- ``gk``/``gu`` global proactive triggers only: the key of their one bucket and of its
  Resolved counter ("" unless top level)
- ``ch`` the composite parents, innermost first, one link each: ``k`` the composite hash key,
  ``t`` the parent's trigger id, ``s`` 1 for a sequence, ``n`` children needed, ``w`` within
  (us, -1: none), ``o`` the children's trigger ids in declared order
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from automations.events import to_us
from automations.keys import Keys, PartitionKeys
from triggers.compiled import CompiledTrigger
from triggers.models import (
    CompositeTrigger,
    EventTrigger,
    Posture,
    SequenceTrigger,
    Trigger,
    all_event_triggers,
    effective_within,
)

_REFS = itertools.count(1)


@dataclass(frozen=True, slots=True, eq=False)
class WindowSpec:
    """One event trigger as the engine evaluates it (built once per automation load)."""

    automation_id: str
    trigger: EventTrigger
    compiled: CompiledTrigger
    top_level: bool
    json: str
    call_json: str  # what an ``apply`` call sends (see the module docstring)
    proactive: bool
    global_key: str | None  # the one bucket of a Proactive trigger without for_each/after
    ordinal: int  # position in the automation's trigger walk (evaluation order)
    # immediate and top level: every covered event fires it, with no state and no parent,
    # so the engine writes the firing itself and the script only appends it to the outbox
    # when the event is new (``ids_json``: its automation and trigger id fields)
    fires_at_once: bool = False
    ids_json: str = ""
    # names the spec in a script call (short, unique in the process: op templates carry it,
    # so they need no per-call numbering)
    ref: str = ""
    partition: int = 0  # the automation's partition (``keys.partition_of``)
    state_keys: tuple[str, ...] = ()  # its composite hashes and global window keys
    links: tuple[tuple[str, str], ...] = ()  # (ref, JSON) of each ``ch`` link, for a call

    @property
    def trigger_id(self) -> str:
        return str(self.trigger.id)

    @property
    def has_after(self) -> bool:
        return bool(self.trigger.after)

    def __repr__(self) -> str:
        t = self.trigger
        return (
            f"WindowSpec(automation={self.automation_id}, trigger={t.id}, "
            f"posture={t.posture.value}, threshold={t.threshold}, "
            f"within={effective_within(t).total_seconds():g}s, top_level={self.top_level})"
        )


def _chain_link(
    automation_id: str, parent: CompositeTrigger, keys: PartitionKeys
) -> dict[str, Any]:
    within = -1 if parent.within is None else to_us(parent.within.total_seconds())
    return {
        "k": keys.composite(automation_id, str(parent.id)),
        "t": str(parent.id),
        "s": 1 if isinstance(parent, SequenceTrigger) else 0,
        "n": parent.needed,
        "w": within,
        "o": [str(child.id) for child in parent.triggers],
    }


def _call_body(body: dict[str, Any], link_refs: list[str]) -> dict[str, Any]:
    """The spec less what an ``apply`` call never reads (every call decodes its specs), its
    links by ref."""
    call = {k: v for k, v in body.items() if k not in ("ix", "ch")}
    if link_refs:
        call["ch"] = link_refs
    return call


def immediate(trigger: EventTrigger) -> bool:
    """Reactive, ``within`` 0, threshold 1, no ``after``: every covered event fires it at
    once, so it needs no window state (only the dedupe and the outbox write)."""
    return (trigger.posture is Posture.Reactive and trigger.threshold == 1
            and not trigger.after and effective_within(trigger).total_seconds() == 0)


def window_specs(automation_id: UUID, trigger: Trigger, all_keys: Keys) -> list[WindowSpec]:
    """Every event trigger of an automation, described for the window scripts (kept small:
    every script call decodes the specs its operations use); its keys are its partition's."""
    aid = str(automation_id)
    keys = all_keys.of(automation_id)
    specs: list[WindowSpec] = []
    links: dict[str, tuple[str, str]] = {}  # composite key -> (ref, link JSON)
    for ordinal, path in enumerate(all_event_triggers(trigger)):
        t = path.trigger
        tid = str(t.id)
        proactive = t.posture is Posture.Proactive
        top_level = not path.parents
        is_global = proactive and not t.for_each and not t.after
        body: dict[str, Any] = {
            "a": aid,
            "t": tid,
            "ix": ordinal,
            "p": 1 if proactive else 0,
            "th": t.threshold,
            "w": to_us(effective_within(t).total_seconds()),
            "af": 1 if t.after else 0,
            "fe": 1 if t.for_each else 0,
            "ch": [_chain_link(aid, p, keys) for p in reversed(path.parents)],
            # immediate: fires on every covered event and keeps no bucket (no Redis read)
            "im": 1 if immediate(t) else 0,
        }
        global_key = keys.bucket(aid, tid, "") if is_global else None
        state_keys = [link["k"] for link in body["ch"]]
        chain = tuple(links.setdefault(link["k"], (str(next(_REFS)), orjson.dumps(link).decode()))
                      for link in body["ch"])
        if global_key is not None:
            body["gk"] = global_key
            body["gu"] = keys.unresolved(aid, tid, "") if top_level else ""
            state_keys += [global_key, body["gu"]] if body["gu"] else [global_key]
        specs.append(WindowSpec(
            automation_id=aid,
            trigger=t,
            compiled=t.compiled,
            top_level=top_level,
            json=orjson.dumps(body).decode(),
            call_json=orjson.dumps(_call_body(body, [ref for ref, _ in chain])).decode(),
            proactive=proactive,
            global_key=global_key,
            ordinal=ordinal,
            fires_at_once=top_level and immediate(t),
            ids_json=f'"automation_id":"{aid}","trigger_id":"{tid}"',
            ref=str(next(_REFS)),
            partition=keys.number,
            state_keys=tuple(state_keys),
            links=chain,
        ))
    return specs
