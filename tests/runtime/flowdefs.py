"""Flows the worker tests run in subprocesses (loaded by file path)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from automations import flow, task


@task
def add(a: int, b: int) -> int:
    return a + b


@flow(name="adder", tags=["math"])
def adder(a: int, b: int = 1) -> int:
    return add(a, b)


@flow(name="breaker")
def breaker(reason: str = "boom") -> None:
    raise RuntimeError(reason)


@flow(name="sleeper")
def sleeper(seconds: float = 60.0, marker: str = "") -> str:
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "woke"


def plain(x: str) -> str:
    """A function without a decorator runs as a flow named after it."""
    return x.upper()


@flow(name="env-writer")
def env_writer(name: str, path: str) -> None:
    Path(path).write_text(os.environ.get(name, "<unset>"))
