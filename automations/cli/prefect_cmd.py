"""``automations bridge prefect`` and ``automations import prefect``: a Prefect 3 server's
events in, its automations over (docs/prefect.md)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import anyio
import typer
from pydantic import SecretStr

from automations.cli.common import (
    EXIT_UNAVAILABLE,
    console,
    fail,
    load_settings,
    print_json,
    user_errors,
)
from automations.cli.serve_cmd import unwrap
from automations.connection import connect
from automations.embedded import redis_for_serve
from automations.errors import AutomationsError
from automations.keys import Keys
from automations.logging_setup import configure_logging
from automations.prefect.client import PrefectError, client_for, display, split_credentials
from automations.prefect.importer import ImportReport, import_automations
from automations.service import serve
from automations.settings import Settings

bridge_app = typer.Typer(help="Bridge another system's events into the engine.",
                         no_args_is_help=True)
import_app = typer.Typer(help="Import automations from another system.", no_args_is_help=True)

ApiUrl = Annotated[str | None, typer.Option(
    "--api-url", help="The Prefect API URL, e.g. http://127.0.0.1:4200/api "
    "(default: AUTOMATIONS_PREFECT_API_URL).")]
AuthString = Annotated[str | None, typer.Option(
    "--auth-string", help="The server's PREFECT_SERVER_API_AUTH_STRING (user:pass) "
    "(default: AUTOMATIONS_PREFECT_AUTH_STRING).")]


def _settings(api_url: str | None, auth_string: str | None) -> Settings:
    settings = load_settings()
    url = api_url or settings.prefect_api_url
    if not url:
        fail("give --api-url or set AUTOMATIONS_PREFECT_API_URL")
    try:
        split_credentials(url)
    except AutomationsError as exc:
        fail(str(exc))
    update: dict[str, object] = {"prefect_api_url": url}
    if auth_string is not None:
        update["prefect_auth_string"] = SecretStr(auth_string)
    return settings.model_copy(update=update)


@bridge_app.command("prefect")
def bridge_prefect(
    api_url: ApiUrl = None,
    auth_string: AuthString = None,
    as_json: Annotated[bool, typer.Option("--json", help="Log JSON lines on stderr.")] = False,
) -> None:
    """Publish a Prefect server's events into the events stream (live, plus reconciliation),
    and write this engine's automation events back to it, until SIGTERM/Ctrl-C."""
    settings = _settings(api_url, auth_string)
    configure_logging(settings.log_level, "json" if as_json else settings.log_format, sys.stderr)
    logging.getLogger(__name__).info("bridge of %s", display(str(settings.prefect_api_url)))
    with user_errors(), redis_for_serve(settings) as resolved:
        try:
            anyio.run(serve, resolved, ["bridge"])
        except BaseExceptionGroup as group:
            raise unwrap(group) from None


@import_app.command("prefect")
def import_prefect(
    api_url: ApiUrl = None,
    auth_string: AuthString = None,
    take_over: Annotated[bool, typer.Option(
        "--take-over", help="Disable the imported automations on the Prefect server so only "
        "this engine runs them.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Copy a Prefect server's automations into the store (keyed by Prefect's ids; running it
    again updates them), mapping the notification and webhook blocks it can read."""
    settings = _settings(api_url, auth_string)

    async def main() -> ImportReport:
        client = client_for(settings)
        redis = connect(settings)
        try:
            return await import_automations(client, redis, Keys.from_settings(settings),
                                            take_over=take_over)
        finally:
            await client.aclose()
            await redis.aclose()

    with user_errors():
        try:
            report = anyio.run(main)
        except PrefectError as exc:
            fail(str(exc), EXIT_UNAVAILABLE if exc.status is None else 2)
    if as_json:
        print_json(report.as_json())
        return
    for line in report.lines():
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bridge_app, name="bridge")
    app.add_typer(import_app, name="import")
