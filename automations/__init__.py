"""automations: an event-driven automations engine on Redis Streams.

Public names are exported lazily: ``triggers`` imports ``automations.events``, and an eager
import of the models here would make that a cycle (DESIGN.md section 2).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Event": "automations.events",
    "Settings": "automations.settings",
    "emit": "automations.streams.publish",
    "aemit": "automations.streams.publish",
    "emit_many": "automations.streams.publish",
    "aemit_many": "automations.streams.publish",
    "Automation": "automations.models",
    "flow": "automations.runtime.flows",
    "task": "automations.runtime.flows",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from automations.events import Event as Event
    from automations.runtime.flows import flow as flow
    from automations.runtime.flows import task as task
    from automations.settings import Settings as Settings
    from automations.streams.publish import aemit as aemit
    from automations.streams.publish import aemit_many as aemit_many
    from automations.streams.publish import emit as emit
    from automations.streams.publish import emit_many as emit_many


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'automations' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
