"""``automations blocks set|ls|delete``: named secrets (Apprise or webhook URLs).

Values are write-only: no command prints one, not even in an error. ``set NAME`` without a
URL (or with ``-``) reads it from stdin, which keeps it out of shell history and ``ps``.
``--json`` prints ``{"block": NAME, "stored": true}`` or ``{"block": NAME, "deleted": true}``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import orjson
import typer
from rich.markup import escape

from actions.secrets import env_name
from automations.blocks import BlockStore, env_block_vars
from automations.cli.common import JsonFlag, console, fail, load_settings, print_json, run
from automations.connection import connect
from automations.errors import NotFound
from automations.keys import Keys

T = TypeVar("T")

blocks_app = typer.Typer(help="Named secrets (Apprise / webhook URLs) used by actions.",
                         no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Block name, as used in an action's 'block'.")]
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")


def register(app: typer.Typer) -> None:
    """Add the ``blocks`` group to the root app."""
    app.add_typer(blocks_app, name="blocks")


def _with_blocks(fn: Callable[[BlockStore], Awaitable[T]]) -> T:
    settings = load_settings()

    async def go() -> T:
        client = connect(settings)
        try:
            return await fn(BlockStore(client, Keys.from_settings(settings)))
        finally:
            await client.aclose()

    return run(go)


@blocks_app.command("set")
def set_block(
    name: NameArg,
    url: Annotated[str, typer.Argument(help="The URL; omit or '-' to read it from stdin.")]
    = "-",
    as_json: JsonFlag = False,
) -> None:
    """Store (or replace) block NAME. The value is never printed."""
    if url == "-":
        url = sys.stdin.readline().strip()
    if not name.strip():
        fail("the block name may not be empty")
    if not _URL.match(url):
        fail("the value must be a URL such as slack://..., mailto://... or https://... "
             "(the value itself is not shown)")

    async def store(blocks: BlockStore) -> None:
        await blocks.set(name, url)

    _with_blocks(store)
    if as_json:
        print_json({"block": name, "stored": True})
        return
    console.print(f"stored block [bold]{escape(name)}[/]", highlight=False)


@blocks_app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
       = False) -> None:
    """List block names (never values), and blocks only set in the environment."""
    blocks = _with_blocks(lambda b: b.names())
    env_only = sorted(set(env_block_vars()) - {env_name(b) for b in blocks})
    if as_json:
        for name in blocks:
            typer.echo(orjson.dumps({"name": name, "source": "stored"}).decode())
        for var in env_only:
            typer.echo(orjson.dumps({"variable": var, "source": "environment"}).decode())
        return
    if not blocks and not env_only:
        console.print("no blocks")
        return
    for name in blocks:
        console.print(escape(name), highlight=False)
    for var in env_only:
        console.print(f"{escape(var)} [dim](environment)[/]", highlight=False)


@blocks_app.command("delete")
def delete(name: NameArg, as_json: JsonFlag = False) -> None:
    """Delete block NAME."""

    async def remove(blocks: BlockStore) -> None:
        if not await blocks.delete(name):
            raise NotFound(f"no block named '{name}'")

    _with_blocks(remove)
    if as_json:
        print_json({"block": name, "deleted": True})
        return
    console.print(f"deleted block [bold]{escape(name)}[/]", highlight=False)
