"""Shared CLI plumbing: settings, one-line errors with exit codes, running coroutines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import orjson
import redis.exceptions
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from automations.errors import (
    AutomationsError,
    BusOverloaded,
    BusUnavailable,
    InvalidAutomation,
    NotFound,
)
from automations.settings import Settings

T = TypeVar("T")

# emoji=False: rich would turn ":id:" of "file.json:id: ..." (or a name like ":fire:") into emoji
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

EXIT_USER_ERROR = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
"""The ``--json`` of a command that reports one result (listings print one object a line)."""


def print_json(data: Mapping[str, Any]) -> None:
    """One JSON object on one line of stdout, unstyled: what scripts parse. Text that goes
    with it (warnings, errors) stays on stderr."""
    typer.echo(orjson.dumps(data).decode())


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True,
                      soft_wrap=True)
    raise typer.Exit(code)


def settings_error(exc: ValidationError) -> str:
    """``AUTOMATIONS_BLOCK_MS: Input should be ...``, one part per bad variable (values are not
    repeated: a Redis URL may hold a password)."""
    parts = []
    for err in exc.errors(include_url=False):
        name = "AUTOMATIONS_" + "_".join(str(p) for p in err["loc"]).upper()
        parts.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid setting " + "; ".join(parts)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fail(settings_error(exc))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn our errors (and Redis being away) into one readable line and an exit code."""
    try:
        yield
    except NotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except (BusUnavailable, BusOverloaded) as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except (redis.exceptions.ConnectionError, OSError) as exc:
        fail(f"cannot reach Redis: {exc}", EXIT_UNAVAILABLE)
    except (InvalidAutomation, AutomationsError) as exc:
        fail(str(exc))


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function to completion, with our errors made readable."""
    with user_errors():
        return anyio.run(fn)
