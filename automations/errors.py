"""One exception hierarchy: every error we raise on purpose is an ``AutomationsError``."""

from __future__ import annotations


class AutomationsError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidEvent(AutomationsError, ValueError):
    """An event breaks the grammar or a limit; the message says which field and why."""


class EventTooLarge(InvalidEvent):
    """The serialised event is over the size limit."""


class InvalidAutomation(AutomationsError, ValueError):
    """An automation definition is invalid; carries where (file, field path) and what."""

    def __init__(self, message: str, *, file: str | None = None, field_path: str = "") -> None:
        self.file = file
        self.field_path = field_path
        self.message = message
        where = ":".join(p for p in (file or "", field_path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class InvalidAutomations(InvalidAutomation):
    """Several automation errors found at once (every item of every file is checked)."""

    def __init__(self, errors: list[InvalidAutomation]) -> None:
        self.errors = errors
        first = errors[0] if errors else InvalidAutomation("invalid automations")
        AutomationsError.__init__(self, "\n".join(str(e) for e in errors) or str(first))
        self.file, self.field_path, self.message = first.file, first.field_path, first.message


class BusUnavailable(AutomationsError, ConnectionError):
    """Redis could not be reached; nothing was published."""


class BusOverloaded(AutomationsError):
    """The events stream stayed over its bound while a publisher waited: the engine is behind.
    The events of the call were published; slow down before sending more."""


class NotFound(AutomationsError, LookupError):
    """A named object (automation, deployment, block) does not exist."""


class LayoutMismatch(AutomationsError):
    """The running settings disagree with the key layout fixed when the installation was
    first started (its partition count)."""
