"""Shared CLI plumbing: settings, one-line errors with exit codes, running coroutines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import anyio
import redis.exceptions
import typer
from pydantic import ValidationError
from rich.console import Console

from automations.errors import AutomationsError, BusUnavailable, InvalidAutomation, NotFound
from automations.settings import Settings

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

EXIT_USER_ERROR = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid AUTOMATIONS_* setting: {exc.errors(include_url=False)[0]}")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn our errors (and Redis being away) into one readable line and an exit code."""
    try:
        yield
    except NotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except (BusUnavailable, redis.exceptions.ConnectionError, OSError) as exc:
        fail(f"cannot reach Redis: {exc}", EXIT_UNAVAILABLE)
    except (InvalidAutomation, AutomationsError) as exc:
        fail(str(exc))


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function to completion, with our errors made readable."""
    with user_errors():
        return anyio.run(fn)
