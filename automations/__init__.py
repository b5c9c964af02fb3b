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
    "emit": "automations.emit",
    "aemit": "automations.emit",
    "emit_many": "automations.emit",
    "aemit_many": "automations.emit",
    "Automation": "automations.models",
    "flow": "automations.runtime.flows",
    "task": "automations.runtime.flows",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from automations.events import Event as Event
    from automations.settings import Settings as Settings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'automations' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
