"""The readable report of a test run: one line per passing test, a diff per failing one
(expected vs got), as rich markup lines."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape

from automations.durations import format_duration
from automations.testing.model import ExpectedFiring
from automations.testing.runner import CaseResult, Got

MAX_LISTED = 20
"""Firings listed under a failing test for context (the diff itself is never cut)."""


def case_lines(case: CaseResult) -> list[str]:
    title = f"{escape(case.file)}: {escape(case.name)}"
    if case.passed:
        return [f"[green]PASS[/] {title} ({len(case.got)} firing(s))"]
    lines = [f"[bold red]FAIL[/] {title} (tests[{case.index}])"]
    for diff in case.different:
        lines.append(f"  [yellow]~ expected[/] (expect[{diff.index}]) "
                     f"{escape(describe_expected(diff.expected))}")
        lines.append(f"    [yellow]got[/]      {escape(describe_got(diff.got))}")
        lines.extend(f"      {escape(problem)}" for problem in diff.problems)
        lines.extend(f"      [dim]note: {escape(note)}[/]" for note in _notes(diff.got))
    for index, wanted in case.missing:
        lines.append(f"  [red]- missing[/]  (expect[{index}]) {escape(describe_expected(wanted))}")
    for got in case.unexpected:
        lines.append(f"  [red]+ unexpected[/] {escape(describe_got(got))}")
    lines.append(f"  got {len(case.got)} firing(s) in all"
                 + (":" if case.got and len(case.got) <= MAX_LISTED else ""))
    if len(case.got) <= MAX_LISTED:
        lines.extend(f"    {escape(describe_got(got))}" for got in case.got)
    if case.held_followers:
        lines.append(f"  [dim]note: {case.held_followers} event(s) still wait for the event "
                     "they `follows`[/]")
    if case.truncated_chains:
        lines.append("  [dim]note: automations kept triggering each other; the chain was cut[/]")
    return lines


def _notes(got: Got) -> list[str]:
    return [f"actions[{a.index}].{p} is a placeholder" for a in got.actions or []
            for p in a.placeholders]


def describe_expected(wanted: ExpectedFiring) -> str:
    parts = [wanted.automation]
    if wanted.at is not None:
        within = f" (within {format_duration(wanted.within)})" if wanted.within else ""
        parts.append(f"at {format_duration(wanted.at)}{within}")
    if wanted.state is not None:
        parts.append(wanted.state)
    if wanted.event is not None:
        parts.append(f"on {wanted.event}")
    if wanted.labels is not None:
        parts.append(f"labels {_labels(wanted.labels)}")
    if wanted.actions:
        parts.append(f"{len(wanted.actions)} action check(s)")
    return " ".join(parts)


def describe_got(got: Got) -> str:
    parts = [got.automation, f"at {format_duration(got.offset)}", got.state]
    if got.event is not None:
        parts.append(f"on {got.event}")
    parts.append(f"labels {_labels(got.labels)}")
    return " ".join(parts)


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"


def summary(cases: Sequence[CaseResult], files: int) -> str:
    failed = sum(1 for c in cases if not c.passed)
    text = (f"{len(cases)} test(s) in {files} file(s): {len(cases) - failed} passed, "
            f"{failed} failed")
    return f"[bold red]{text}[/]" if failed else f"[green]{text}[/]"
