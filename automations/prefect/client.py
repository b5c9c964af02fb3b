"""A small REST client of a Prefect 3 server: the few endpoints the bridge, the action backend
and the importer use, over httpx (no ``prefect`` package: its pins clash with ours).

Auth is Prefect's: REST takes ``Authorization: Basic base64(auth string)``, the websocket takes
the raw auth string in its first frame. Credentials may also ride in the URL's userinfo
(``http://user:pass@host/api``), which is how a single action names a server of its own.
Every failure is a ``PrefectError`` carrying Prefect's own error detail, so it can go into an
action's failed event or a CLI message unchanged.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from automations.errors import AutomationsError
from automations.settings import Settings

EVENTS_PAGE = 50  # /events/filter refuses a larger limit (422)
AUTOMATIONS_PAGE = 200  # /automations/filter's largest limit


class PrefectError(AutomationsError):
    """A request to Prefect failed: ``status`` is None when the server could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


def split_credentials(api_url: str, auth_string: str | None = None) -> tuple[str, str | None]:
    """``(url without userinfo, auth string)``: credentials in the URL win over ``auth_string``."""
    parts = urlsplit(api_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AutomationsError(f"{api_url!r} is not an http(s) Prefect API URL "
                               "(like http://127.0.0.1:4200/api)")
    if parts.username is None:
        return urlunsplit(parts).rstrip("/"), auth_string
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    auth = unquote(parts.username) + ":" + unquote(parts.password or "")
    return urlunsplit(parts._replace(netloc=host)).rstrip("/"), auth


def display(api_url: str) -> str:
    """The URL without credentials, for logs and messages."""
    try:
        return split_credentials(api_url)[0]
    except AutomationsError:
        return "<invalid URL>"


def iso(moment: datetime) -> str:
    return moment.isoformat()


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if not isinstance(body, dict):
        return body
    if body.get("detail"):
        return body["detail"]
    # 422: the message is generic, the field errors say what was wrong; the echoed
    # ``request_body`` is left out (it may hold secrets)
    problems = [f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}"
                for e in body.get("exception_detail") or [] if isinstance(e, dict)]
    message = body.get("exception_message")
    if message and problems:
        return f"{message} {'; '.join(problems)}"
    return message or {k: v for k, v in body.items() if k != "request_body"}


class PrefectClient:
    """One pooled httpx client on one server; ``async with`` closes it."""

    def __init__(self, api_url: str, auth_string: str | None = None, *,
                 timeout: float = 30.0) -> None:
        self.api_url, self.auth_string = split_credentials(api_url, auth_string)
        headers = {}
        if self.auth_string:
            token = base64.b64encode(self.auth_string.encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.http = httpx.AsyncClient(base_url=self.api_url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"PrefectClient({self.api_url!r})"

    async def __aenter__(self) -> PrefectClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    @property
    def events_out_url(self) -> str:
        scheme, rest = self.api_url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest + "/events/out"

    async def request(self, method: str, path: str, *, json: Any = None,
                      headers: Mapping[str, str] | None = None,
                      ok: Sequence[int] = ()) -> httpx.Response:
        """The response when 2xx (or in ``ok``); a ``PrefectError`` with Prefect's detail
        otherwise."""
        try:
            response = await self.http.request(method, path, json=json, headers=headers)
        except httpx.TimeoutException as exc:
            raise PrefectError(f"Prefect at {self.api_url} timed out: {exc!r}") from None
        except httpx.TransportError as exc:
            raise PrefectError(f"cannot reach Prefect at {self.api_url}: {exc!r}") from None
        if response.is_success or response.status_code in ok:
            return response
        detail = _detail(response)
        raise PrefectError(f"Prefect answered {response.status_code} to {method} {path}: "
                           f"{detail}", status=response.status_code, detail=detail,
                           headers=response.headers)

    async def health(self) -> None:
        await self.request("GET", "/health")

    # -- events --------------------------------------------------------------------------------
    async def events(self, since: datetime, until: datetime) -> AsyncIterator[dict[str, Any]]:
        """Every event with ``since <= occurred <= until``, oldest first, following
        ``next_page`` (paging is by offset: a late insert can repeat an event at a page
        boundary, so callers dedupe by id)."""
        body = {"filter": {"occurred": {"since": iso(since), "until": iso(until)},
                           "order": "ASC"}, "limit": EVENTS_PAGE}
        page = (await self.request("POST", "/events/filter", json=body)).json()
        while True:
            for event in page.get("events", []):
                yield event
            next_page = page.get("next_page")
            if not next_page:
                return
            page = (await self.request("GET", str(next_page))).json()

    async def post_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Write events (a JSON array; Prefect skips ids it already has)."""
        if events:
            await self.request("POST", "/events", json=list(events))

    # -- automations ---------------------------------------------------------------------------
    async def automations(self) -> list[dict[str, Any]]:
        """Every automation of the server, paged by offset and sorted by creation."""
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        offset = 0
        while True:
            body = {"sort": "CREATED_DESC", "limit": AUTOMATIONS_PAGE, "offset": offset}
            page = (await self.request("POST", "/automations/filter", json=body)).json()
            for automation in page:
                if automation["id"] not in seen:  # offset paging: a concurrent create shifts
                    seen.add(automation["id"])
                    found.append(automation)
            if len(page) < AUTOMATIONS_PAGE:
                return found
            offset += AUTOMATIONS_PAGE

    async def set_automation_enabled(self, automation_id: str, enabled: bool) -> None:
        await self.request("PATCH", f"/automations/{automation_id}", json={"enabled": enabled})

    async def block_document_secrets(self, block_id: str) -> dict[str, Any]:
        """The block document with its secret fields in clear (``include_secrets``)."""
        response = await self.request(
            "GET", f"/block_documents/{block_id}?include_secrets=true")
        data: dict[str, Any] = response.json()
        return data


def client_for(settings: Settings, api_url: str | None = None) -> PrefectClient:
    """A client of ``api_url`` (else the configured server) with the configured auth string."""
    url = api_url or settings.prefect_api_url
    if not url:
        raise AutomationsError("no Prefect API URL: set AUTOMATIONS_PREFECT_API_URL or give one")
    secret = settings.prefect_auth_string
    return PrefectClient(url, secret.get_secret_value() if secret else None)
