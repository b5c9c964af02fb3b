"""``automations emit`` (one event from arguments, or JSON Lines) and ``automations events``.

``emit --json`` prints the event as published (one event) or ``{"emitted", "bad", "errors"}``
(``--file``); the per-line errors are on stderr as well.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import orjson
import redis.asyncio as aioredis
import typer
from rich.markup import escape

from automations.cli.common import (
    EXIT_USER_ERROR,
    console,
    err_console,
    fail,
    load_settings,
    print_json,
    run,
)
from automations.connection import connect, display_url, redis_url
from automations.errors import BusUnavailable, InvalidEvent
from automations.events import (
    MAX_EVENT_BYTES,
    RESOURCE_ID,
    RESOURCE_ROLE,
    Event,
    event_json_schema,
)
from automations.keys import Keys
from automations.settings import Settings
from automations.streams.publish import Publisher, build_event

BATCH = 1000

events_app = typer.Typer(help="Look at the events stream.", no_args_is_help=True)


def parse_labels(text: str, *, what: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE...]``; a bare ``VALUE`` is the ``prefect.resource.id``."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            key, value = RESOURCE_ID, part
        if not key.strip() or not value:
            raise InvalidEvent(f"{what} {text!r}: expected KEY=VALUE")
        labels[key.strip()] = value
    return labels


def parse_related(text: str) -> dict[str, str]:
    """``ROLE:KEY=VALUE[,KEY=VALUE...]``."""
    role, sep, rest = text.partition(":")
    if not sep or not role or not rest:
        raise InvalidEvent(f"--related {text!r}: expected ROLE:KEY=VALUE[,KEY=VALUE...]")
    return {**parse_labels(rest, what="--related"), RESOURCE_ROLE: role}


def event_from_args(
    name: str, resource: list[str], related: list[str], payload: str | None,
    event_id: str | None, occurred: str | None,
) -> Event:
    fields: dict[str, Any] = {"event": name, "resource": {}, "related": []}
    for item in resource:
        fields["resource"].update(parse_labels(item, what="--resource"))
    fields["related"] = [parse_related(item) for item in related]
    if payload is not None:
        try:
            fields["payload"] = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"--payload is not valid JSON: {exc}") from None
    if event_id is not None:
        fields["id"] = event_id
    if occurred is not None:
        fields["occurred"] = occurred
    return build_event(fields)


def parse_lines(lines: Iterable[str]) -> Iterator[tuple[int, Event | str]]:
    """(line number, event or error message) for every non-blank line. As with Python's
    ``emit``, ``"resource"`` may be a bare string: the resource id."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, Event.from_json(line)
        except InvalidEvent as exc:
            yield number, _with_bare_resource(line) or str(exc)


def _with_bare_resource(line: str) -> Event | str | None:
    """For a line whose ``resource`` is a bare string, its event or what is still wrong with
    it; None for any other line (its first error stands)."""
    if len(line) > MAX_EVENT_BYTES:
        return None
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("resource"), str):
        return None
    try:
        return build_event(data)
    except InvalidEvent as exc:
        return str(exc)


async def emit_lines(settings: Settings, source: TextIO) -> tuple[int, list[tuple[int, str]]]:
    """Publish every valid line in batches, report each bad one on stderr; returns the number
    emitted and the bad lines as (line number, error).

    If Redis goes away midway, the error says up to which line events were published.
    """
    client = connect(settings)
    publisher = Publisher(client, settings)
    batch: list[Event] = []
    bad: list[tuple[int, str]] = []
    done_through = 0
    try:
        for number, item in parse_lines(source):
            if isinstance(item, str):
                bad.append((number, item))
                err_console.print(f"line {number}: {escape(item)}", highlight=False)
                continue
            batch.append(item)
            if len(batch) >= BATCH:
                await publisher.publish(batch)
                batch, done_through = [], number
        if batch:
            await publisher.publish(batch)
    except BusUnavailable as exc:
        where = f"through line {done_through}" if done_through else "none"
        raise BusUnavailable(f"{exc} (events published: {publisher.published}, {where})") from exc
    finally:
        await client.aclose()
    return publisher.published, bad


def emit_command(
    name: str | None = typer.Argument(None, help="Event name, e.g. `my.app.started`."),
    resource: list[str] = typer.Option(
        [], "--resource", "-r", help="Resource label KEY=VALUE (repeat); a bare VALUE is the id."
    ),
    related: list[str] = typer.Option(
        [], "--related", help="Related resource ROLE:KEY=VALUE[,KEY=VALUE...] (repeat)."
    ),
    payload: str | None = typer.Option(None, "--payload", "-p", help="Payload as a JSON object."),
    event_id: str | None = typer.Option(None, "--id", help="Event id (UUID); default a new one."),
    occurred: str | None = typer.Option(None, "--occurred", help="ISO-8601 time; default now."),
    file: str | None = typer.Option(
        None, "--file", "-f", help="JSON Lines file of events (`-` for stdin); each keeps its id."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the event as published, or with --file one summary object."
    ),
) -> None:
    """Publish one event from arguments, or many from a JSON Lines file."""
    settings = load_settings()
    if name is None and file is None:
        fail("give an event NAME, or --file FILE.jsonl (- for stdin)")
    if name is not None and file is not None:
        fail("give an event NAME or --file FILE.jsonl (- for stdin), not both")
    if file is not None:
        if resource or related or payload or event_id or occurred:
            fail("--file takes the events from the file; drop the other options")
        try:
            source: TextIO = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
        with source:
            emitted, bad = run(lambda: emit_lines(settings, source))
        if as_json:
            print_json({"emitted": emitted, "bad": len(bad),
                        "errors": [{"line": line, "error": error} for line, error in bad]})
        skipped = f", {len(bad)} bad lines skipped" if bad else ""
        err_console.print(f"emitted {emitted} events{skipped}", highlight=False)
        if bad:
            raise typer.Exit(EXIT_USER_ERROR)
        return
    assert name is not None
    try:
        event = event_from_args(name, resource, related, payload, event_id, occurred)
    except InvalidEvent as exc:
        fail(str(exc))

    async def publish() -> None:
        client = connect(settings)
        try:
            await Publisher(client, settings).publish([event])
        finally:
            await client.aclose()

    run(publish)
    typer.echo(event.to_json().decode() if as_json else str(event.id))


def format_event(raw: bytes) -> str:
    """One readable rich line for a stream entry (or the raw text if it is not an event)."""
    try:
        event = Event.from_json(raw)
    except InvalidEvent as exc:
        text = escape(raw[:200].decode(errors="replace"))
        return f"[red]invalid event[/] {escape(str(exc))}: {text}"
    related = " ".join(
        f"{escape(r.get(RESOURCE_ROLE, '?'))}={escape(r.get(RESOURCE_ID, '?'))}"
        for r in event.related
    )
    payload = escape(orjson.dumps(event.payload).decode()[:120]) if event.payload else ""
    return (
        f"[dim]{event.occurred.isoformat(timespec='milliseconds')}[/] [bold cyan]"
        f"{escape(event.event)}[/] {escape(event.resource_id)}"
        + (f" [dim]{related}[/]" if related else "") + (f" {payload}" if payload else "")
    )


async def tail_stream(settings: Settings, *, as_json: bool, count: int | None) -> None:
    client = connect(settings)
    stream = Keys.from_settings(settings).events
    shown = 0
    try:
        last = await _last_id(client, stream)
        err_console.print(
            f"tailing {stream} on {display_url(redis_url(settings))} (Ctrl-C to stop)",
            highlight=False,
        )
        while count is None or shown < count:
            reply: Any = await client.xread({stream: last}, count=BATCH, block=1000)
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    _show(fields.get(b"data", b""), as_json)
                    shown += 1
                    if count is not None and shown >= count:
                        return
    finally:
        await client.aclose()


async def _last_id(client: aioredis.Redis, stream: str) -> str:
    """Where ``tail`` starts: after the newest entry now, so nothing emitted later is missed."""
    newest: Any = await client.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def _show(data: bytes, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(data.decode(errors="replace") + "\n")
        sys.stdout.flush()
    else:
        console.print(format_event(data), highlight=False, soft_wrap=True)


@events_app.command("tail")
def tail_command(
    as_json: bool = typer.Option(False, "--json", help="One event JSON per line."),
    count: int | None = typer.Option(None, "--count", "-n", min=1, help="Stop after N events."),
) -> None:
    """Show events as they arrive (from now on), pretty or as JSON lines."""
    settings = load_settings()
    try:
        run(lambda: tail_stream(settings, as_json=as_json, count=count))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@events_app.command("schema")
def schema_command(
    as_json: bool = typer.Option(False, "--json",
                                 help="Accepted for scripts: the output is JSON already."),
) -> None:
    """Print the JSON Schema of an event."""
    del as_json  # the same output either way
    typer.echo(orjson.dumps(event_json_schema(), option=orjson.OPT_INDENT_2).decode())


def register(app: typer.Typer) -> None:
    """Add ``emit`` and the ``events`` group to the root app."""
    app.command("emit")(emit_command)
    app.add_typer(events_app, name="events")
