"""The HTML pages: server-rendered from the same queries as the API, with plain forms that
POST and redirect back (303), so every page works without JavaScript; ``console.js`` adds the
live feed and refreshes."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from automations.console import commands, queries, security
from automations.console.context import Console
from automations.events import utcnow


def back(request: Request, default: str, message: str) -> RedirectResponse:
    """Back to the page the form was on, with what happened (shown, escaped, by the page)."""
    target = security.safe_next(request.query_params.get("next") or default)
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}{urlencode({'done': message})}", status_code=303)


def pretty(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


class Pages:
    """One method per page or form; ``routes`` lists them."""

    def __init__(self, c: Console, templates: Jinja2Templates) -> None:
        self.c = c
        self.templates = templates

    def render(self, request: Request, template: str, status: int = 200,
               **context: Any) -> Response:
        context.update(csrf=request.state.csrf, done=request.query_params.get("done"),
                       token_set=bool(self.c.settings.ui_token))
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/automations", status_code=303)

    # automations
    async def automations(self, request: Request) -> Response:
        q = request.query_params
        data = await queries.automations_page(
            self.c, q=q.get("q", ""), offset=queries.offset_of(q.get("offset")),
            limit=queries.limit_of(q.get("limit")), now=utcnow())
        return self.render(request, "automations.html", page=data, nav="automations")

    async def automation(self, request: Request) -> Response:
        data = await queries.automation_detail(self.c, request.path_params["name"],
                                               now=utcnow())
        fmt = "json" if request.query_params.get("format") == "json" else "yaml"
        text = pretty(data["definition"]) if fmt == "json" else \
            yaml.safe_dump(data["definition"], sort_keys=False, allow_unicode=True)
        return self.render(request, "automation.html", data=data, fmt=fmt, text=text,
                           nav="automations")

    async def _enable(self, request: Request, enabled: bool) -> Response:
        name = request.path_params["name"]
        result = await commands.set_enabled(self.c, name, enabled)
        state = "resumed" if enabled else "paused"
        message = f"{state} {result['name']}" if result["changed"] else \
            f"{result['name']} was already {state}"
        return back(request, f"/automations/{quote(name, safe='')}", message)

    async def pause(self, request: Request) -> Response:
        return await self._enable(request, False)

    async def resume(self, request: Request) -> Response:
        return await self._enable(request, True)

    # events
    async def events(self, request: Request) -> Response:
        q = request.query_params
        data = await queries.events_page(self.c, name=q.get("name", ""),
                                         label=q.get("label", ""), before=q.get("before", ""),
                                         limit=queries.limit_of(q.get("limit")))
        return self.render(request, "events.html", page=data, nav="events")

    async def event(self, request: Request) -> Response:
        data = await queries.event_detail(self.c, request.path_params["target"], now=utcnow())
        event = data["event"]
        payload = pretty(event["payload"]) if event and not event["invalid"] else None
        return self.render(request, "event.html", data=data, payload=payload, nav="events")

    # dead letters
    async def dead(self, request: Request) -> Response:
        q = request.query_params
        data = await queries.dead_letters_page(self.c, stream=q.get("stream", ""),
                                               before=q.get("before", ""),
                                               limit=queries.limit_of(q.get("limit")))
        return self.render(request, "dead_letters.html", page=data, nav="dead")

    async def letter(self, request: Request) -> Response:
        p = request.path_params
        data = await queries.dead_letter(self.c, p["stream"], p["id"])
        return self.render(request, "dead_letter.html", letter=data,
                           payload=pretty(data.get("payload")), nav="dead")

    async def retry(self, request: Request) -> Response:
        p = request.path_params
        result = await commands.retry_letter(self.c, p["stream"], p["id"])
        return back(request, "/dead-letters", f"retried {result['id']}: {result['outcome']}")

    async def purge(self, request: Request) -> Response:
        p = request.path_params
        result = await commands.purge_letter(self.c, p["stream"], p["id"])
        return back(request, "/dead-letters", f"purged {result['purged']} dead letter(s)")

    async def purge_all(self, request: Request) -> Response:
        result = await commands.purge_stream(self.c, request.path_params["stream"])
        return back(request, "/dead-letters",
                    f"purged {result['purged']} dead letter(s) of {result['stream']}")

    # deployments and flow runs
    async def deployments(self, request: Request) -> Response:
        return self.render(request, "deployments.html",
                           page=await queries.deployments_page(self.c), nav="deployments")

    async def deployment(self, request: Request) -> Response:
        data = await queries.deployment_detail(self.c, request.path_params["name"])
        return self.render(request, "deployment.html", data=data, nav="deployments")

    async def run_now(self, request: Request) -> Response:
        form = security.form_value(await request.body(), "parameters") or ""
        try:
            params = orjson.loads(form) if form.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"parameters must be a JSON object: {exc}") from None
        if not isinstance(params, dict):
            raise ValueError("parameters must be a JSON object")
        run = await commands.run_deployment(self.c, request.path_params["name"], params)
        return RedirectResponse(f"/flow-runs/{run['id']}?"
                                + urlencode({"done": f"created flow run {run['name']}"}),
                                status_code=303)

    async def _paused(self, request: Request, paused: bool) -> Response:
        result = await commands.set_paused(self.c, request.path_params["name"], paused)
        state = "paused" if paused else "resumed"
        message = f"{state} {result['deployment']}" if result["changed"] else \
            f"{result['deployment']} was already {state}"
        return back(request, "/deployments", message)

    async def pause_deployment(self, request: Request) -> Response:
        return await self._paused(request, True)

    async def resume_deployment(self, request: Request) -> Response:
        return await self._paused(request, False)

    async def runs(self, request: Request) -> Response:
        q = request.query_params
        data = await queries.runs_page(self.c, deployment=q.get("deployment", ""),
                                       state=q.get("state", ""),
                                       offset=queries.offset_of(q.get("offset")),
                                       limit=queries.limit_of(q.get("limit")))
        return self.render(request, "flow_runs.html", page=data, nav="runs")

    async def run(self, request: Request) -> Response:
        data = await queries.run_detail(self.c, request.path_params["run"])
        return self.render(request, "flow_run.html", run=data,
                           parameters=pretty(data["parameters"]), nav="runs")

    # the token
    async def login(self, request: Request) -> Response:
        nxt = security.safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return self.render(request, "login.html", next=nxt, failed=False, nav="")
        given = security.form_value(await request.body(), "token") or ""
        token = self.c.settings.ui_token
        if token and hmac.compare_digest(given.encode(), token.encode()):
            response = RedirectResponse(nxt, status_code=303)
            security.login_cookie(response, token, request)
            return response
        return self.render(request, "login.html", 401, next=nxt, failed=True, nav="")

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(security.SESSION_COOKIE, path="/")
        return response

    def routes(self) -> list[BaseRoute]:
        post = ["POST"]
        a = "/automations/{name:path}"
        d = "/dead-letters/{stream}/{id}"
        dep = "/deployments/{name}"
        return [
            Route("/", self.home),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=post),
            Route("/automations", self.automations),
            Route(f"{a}/pause", self.pause, methods=post),
            Route(f"{a}/resume", self.resume, methods=post),
            Route(a, self.automation),
            Route("/events", self.events),
            Route("/events/{target}", self.event),
            Route("/dead-letters", self.dead),
            Route("/dead-letters/{stream}/purge", self.purge_all, methods=post),
            Route(d, self.letter),
            Route(f"{d}/retry", self.retry, methods=post),
            Route(f"{d}/purge", self.purge, methods=post),
            Route("/deployments", self.deployments),
            Route(dep, self.deployment),
            Route(f"{dep}/run", self.run_now, methods=post),
            Route(f"{dep}/pause", self.pause_deployment, methods=post),
            Route(f"{dep}/resume", self.resume_deployment, methods=post),
            Route("/flow-runs", self.runs),
            Route("/flow-runs/{run}", self.run),
        ]


def routes(c: Console, templates: Jinja2Templates) -> list[BaseRoute]:
    return Pages(c, templates).routes()
