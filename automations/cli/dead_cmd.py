"""``automations dead ls|show|retry|purge``: inspect and re-drive dead letters
(``automations.insight.dead_letters``).

Arguments are entry ids (``1712345678901-0``) and, optionally, one stream name (``events``,
``firings``, ``runs``, ``firings@3`` for one partition's outbox, or a full key; ``firings``
means every firings dead stream: given-up actions and every partition's); without a stream, an
id is looked up in every dead stream of the prefix.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import orjson
import redis.asyncio as aioredis
import typer
from rich.markup import escape
from rich.table import Column, Table

from automations.cli.common import EXIT_USER_ERROR, console, err_console, fail, load_settings, run
from automations.connection import connect
from automations.errors import NotFound
from automations.insight.dead_letters import (
    ENTRY_ID,
    CannotRedrive,
    DeadLetter,
    dead_keys,
    dead_streams,
    find,
    purge,
    purge_all,
    read_all,
    redrive,
    short_name,
)
from automations.keys import Keys
from automations.settings import Settings

T = TypeVar("T")

dead_app = typer.Typer(help="Dead letters: list, show, re-drive (retry) and purge them.",
                       no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output for scripts.")]
StreamArg = Annotated[str | None, typer.Argument(
    metavar="[STREAM]",
    help="events, firings, runs, firings@N (one partition; or a full key); default: every one.")]
ArgsArg = Annotated[list[str] | None, typer.Argument(
    metavar="ID... [STREAM]", help="Dead letter ids, and optionally their stream.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every letter of STREAM.")]


def _with_redis(fn: Callable[[aioredis.Redis, Keys], Awaitable[T]]) -> T:
    settings: Settings = load_settings()

    async def main() -> T:
        client = connect(settings)
        try:
            return await fn(client, Keys.from_settings(settings))
        finally:
            await client.aclose()

    try:
        return run(main)
    except ValueError as exc:
        fail(str(exc))


def _split(args: list[str] | None) -> tuple[list[str], str | None]:
    """Ids and at most one stream name out of the positional arguments."""
    ids = [a for a in args or [] if ENTRY_ID.match(a)]
    streams = [a for a in args or [] if not ENTRY_ID.match(a)]
    if len(streams) > 1:
        fail(f"one STREAM at most, got {', '.join(streams)} (ids look like 1712345678901-0)")
    return ids, (streams[0] if streams else None)


async def _letters(client: aioredis.Redis, keys: Keys, ids: list[str], stream: str | None,
                   every: bool) -> list[DeadLetter]:
    """The letters named, all found before anything changes (``NotFound``: exit 3)."""
    if every:
        if stream is None:
            raise ValueError("--all needs a STREAM (events, firings, runs, ...)")
        return list(reversed(await read_all(client, dead_keys(keys, stream))))
    if not ids:
        raise ValueError("name dead letter ids, or --all with a STREAM")
    return [await find(client, keys, entry_id, stream) for entry_id in ids]


async def _counts(client: aioredis.Redis, keys: Keys) -> list[tuple[str, str, int]]:
    """(name, key, count) of every dead stream that holds letters."""
    return [(short_name(keys, key), key, count)
            for key, count in (await dead_streams(client, keys)).items() if count]


@dead_app.command("ls")
def ls_cmd(
    stream: StreamArg = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N",
                                       help="At most N letters (the newest).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Dead streams with their counts, or the letters of STREAM, newest first."""
    if stream is None:
        counts = _with_redis(lambda client, keys: _counts(client, keys))
        if as_json:
            for short, key, count in counts:
                typer.echo(orjson.dumps({"stream": short, "key": key, "count": count}).decode())
            return
        if not counts:
            console.print("no dead letters", highlight=False)
            return
        table = Table("stream", Column("key", overflow="fold"), Column("count", justify="right"))
        for short, key, count in counts:
            table.add_row(escape(short), escape(key), str(count))
        console.print(table)
        return
    name = stream

    async def letters(client: aioredis.Redis, keys: Keys) -> list[DeadLetter]:
        return await read_all(client, dead_keys(keys, name), limit=limit)

    found = _with_redis(letters)
    if as_json:
        for letter in found:
            typer.echo(orjson.dumps(letter.to_json()).decode())
        return
    if not found:
        console.print(f"no dead letters in {escape(name)}", highlight=False)
        return
    table = Table(Column("id", no_wrap=True), Column("when (UTC)", no_wrap=True),
                  Column("reason", overflow="fold"), Column("source", overflow="fold"))
    for letter in found:
        table.add_row(letter.id, letter.at.strftime("%Y-%m-%d %H:%M:%S"), escape(letter.reason),
                      escape(letter.source))
    console.print(table)


@dead_app.command("show")
def show_cmd(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="Dead letter id.")],
    stream: StreamArg = None,
    as_json: JsonOpt = False,
) -> None:
    """One dead letter in full, its original payload pretty-printed."""
    letter = _with_redis(lambda client, keys: find(client, keys, entry_id, stream))
    if as_json:
        typer.echo(orjson.dumps(letter.to_json(full=True)).decode())
        return
    summary = Table.grid(padding=(0, 2))
    for name, value in (("dead letter", letter.id), ("stream", letter.key),
                        ("when (UTC)", letter.at.isoformat()), ("source", letter.source)):
        summary.add_row(name, escape(value))
    console.print(summary)
    console.print("fields:", highlight=False)
    fields = Table.grid(padding=(0, 2))
    for name, value in letter.fields.items():
        if name != "data":
            fields.add_row(f"  {escape(name)}", escape(value))
    console.print(fields)
    payload = letter.payload()
    if payload is not None:
        console.print("payload:", highlight=False)
        text = (payload if isinstance(payload, str)
                else orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        typer.echo(text)


@dead_app.command("retry")
def retry_cmd(args: ArgsArg = None, every: AllOpt = False, as_json: JsonOpt = False) -> None:
    """Re-drive dead letters: an entry goes back to its source stream, a given-up action is
    scheduled again (one more attempt); each letter is deleted once its re-drive is written."""
    ids, stream = _split(args)

    async def main(client: aioredis.Redis, keys: Keys) -> list[tuple[DeadLetter, str, bool]]:
        done = []
        for letter in await _letters(client, keys, ids, stream, every):
            try:
                done.append((letter, await redrive(client, keys, letter, now=time.time()),
                             True))
            except (CannotRedrive, NotFound) as exc:
                done.append((letter, str(exc), False))
        return done

    results = _with_redis(main)
    for letter, what, ok in results:
        if as_json:
            typer.echo(orjson.dumps({"id": letter.id, "stream": letter.key, "retried": ok,
                                     "result": what}).decode())
        elif ok:
            console.print(f"retried {letter.id}: {escape(what)}", highlight=False)
        else:
            err_console.print(f"[bold red]error:[/] {letter.id}: {escape(what)}",
                              highlight=False)
    if not as_json and every:
        console.print(f"{sum(ok for _, _, ok in results)} of {len(results)} retried",
                      highlight=False)
    if not all(ok for _, _, ok in results):
        raise typer.Exit(EXIT_USER_ERROR)


@dead_app.command("purge")
def purge_cmd(
    args: ArgsArg = None,
    every: AllOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (with --all).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters for good (--all asks first, unless --yes)."""
    ids, stream = _split(args)
    if every:
        if stream is None:
            fail("--all needs a STREAM (events, firings, runs, ...)")
        if ids:
            fail("give ids or --all, not both")
        name = stream

        async def count(client: aioredis.Redis, keys: Keys) -> tuple[list[str], int]:
            found = dead_keys(keys, name)
            return found, sum([int(await client.xlen(key)) for key in found])

        found, total = _with_redis(count)
        if total and not yes and not typer.confirm(
                f"delete all {total} dead letters of {', '.join(found)}?"):
            raise typer.Exit(1)
        removed = _with_redis(lambda client, keys: _purge_all(client, found))
    else:
        removed = _with_redis(
            lambda client, keys: _purge_ids(client, keys, ids, stream))
    if as_json:
        typer.echo(orjson.dumps({"purged": removed}).decode())
    else:
        console.print(f"purged {removed} dead letter(s)", highlight=False)


async def _purge_all(client: aioredis.Redis, found: list[str]) -> int:
    return sum([await purge_all(client, key) for key in found])


async def _purge_ids(client: aioredis.Redis, keys: Keys, ids: list[str], stream: str | None
                     ) -> int:
    return await purge(client, await _letters(client, keys, ids, stream, False))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(dead_app, name="dead")

