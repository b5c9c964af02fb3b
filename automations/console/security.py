"""Who may use the console, and which mutating requests are the user's own.

- **Bind.** Loopback needs no token; any other address refuses to start without
  ``ui_token`` (``check_bind``).
- **Token.** With a token, every request but ``/login`` and ``/static`` carries it: the header
  ``Authorization: Bearer <token>``, or the HttpOnly cookie the login form sets (an HMAC of
  the token, never the token itself). Pages redirect to ``/login``; the API answers 401.
- **CSRF.** A mutating request (POST, PUT, PATCH, DELETE) is refused (403) when its ``Origin``
  (or ``Sec-Fetch-Site``) says another site sent it. A POST must also prove it is no
  cross-site form: a Bearer header, the CSRF cookie's value in the ``csrf`` form field or the
  ``X-CSRF-Token`` header (double submit), or, on ``/api``, a JSON body (a browser preflights
  a cross-site JSON request, and the console grants no CORS). PUT, PATCH and DELETE are never
  sent cross-site without such a preflight.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from automations.errors import AutomationsError

SESSION_COOKIE = "automations_session"
CSRF_COOKIE = "automations_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_PATHS = ("/login", "/static/")


class InsecureBind(AutomationsError):
    """A non-loopback address without a token."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve ``host`` without a token unless it is a loopback address."""
    if not is_loopback(host) and not token:
        raise InsecureBind(
            f"the console would listen on {host}, which is not a loopback address, without a "
            "token: set AUTOMATIONS_UI_TOKEN (every request must then carry it), or bind "
            "127.0.0.1")


def session_value(token: str) -> str:
    """The login cookie: proves the token was given without holding it."""
    return hmac.new(token.encode(), b"automations-console-session", hashlib.sha256).hexdigest()


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authenticated(request: Request, token: str | None) -> bool:
    if not token:
        return True
    if _same(bearer(request), token):
        return True
    return _same(request.cookies.get(SESSION_COOKIE), session_value(token))


def own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"


def cross_site(request: Request) -> bool:
    """The browser says another site made this request."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and origin.rstrip("/") != own_origin(request):
        return True
    if origin == "null":
        return True
    return request.headers.get("sec-fetch-site", "same-origin") == "cross-site"


async def csrf_proven(request: Request, token: str | None) -> bool:
    """A Bearer token, the double-submit value, or a JSON body on the API. PUT, PATCH and
    DELETE need none: a browser never sends them cross-site without a CORS preflight."""
    if request.method != "POST" or (token and _same(bearer(request), token)):
        return True
    cookie = request.cookies.get(CSRF_COOKIE)
    if _same(request.headers.get(CSRF_HEADER), cookie):
        return True
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.url.path.startswith("/api/") and content_type == "application/json":
        return True
    if content_type == "application/x-www-form-urlencoded":
        return _same(form_value(await request.body(), CSRF_FIELD), cookie)
    return False


def refuse(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return PlainTextResponse(message, status_code=status)


class Guard:
    """ASGI middleware: the token, then CSRF; a CSRF cookie is set on any response that
    lacks one (pages put its value into their forms)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        path = request.url.path
        if not path.startswith(OPEN_PATHS) and not authenticated(request, self.token):
            await refuse(request, 401, "a token is needed: Authorization: Bearer <token>, "
                         "or log in")(scope, receive, send)
            return
        if request.method in MUTATING:
            if cross_site(request):
                await refuse(request, 403, "cross-site request refused")(scope, receive, send)
                return
            if not await csrf_proven(request, self.token):
                await refuse(request, 403, "CSRF check failed: reload the page and try "
                             "again")(scope, receive, send)
                return
            receive = _replay(await request.body(), receive)
        csrf = request.cookies.get(CSRF_COOKIE)
        scope.setdefault("state", {})["csrf"] = csrf or new_csrf()
        await self.app(scope, receive, _with_cookie(send, None if csrf else
                                                    scope["state"]["csrf"], request))


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_cookie(send: Send, csrf: str | None, request: Request) -> Send:
    if csrf is None:
        return send
    secure = "; Secure" if request.url.scheme == "https" else ""
    cookie = f"{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict{secure}".encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []),
                                              (b"set-cookie", cookie)]}
        await send(message)

    return sending


def login_cookie(response: Response, token: str, request: Request) -> None:
    response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def safe_next(value: str | None) -> str:
    """Only a local path: never an open redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def form_value(body: bytes, name: str) -> str | None:
    found = parse_qs(body.decode(errors="replace")).get(name)
    return found[0] if found else None


Handler = Callable[[Request], Awaitable[Response]]
