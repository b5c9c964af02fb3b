"""The JSON API under ``/api`` (documented route by route in ``docs/api.md``): the same
queries the pages render and the same commands their forms post."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from automations.console import commands, live, queries
from automations.console.context import Console
from automations.events import utcnow


class BadRequest(ValueError):
    """A request the API cannot read (its body or a parameter)."""


def ok(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def body_json(request: Request, *, empty: Any = None) -> Any:
    raw = await request.body()
    if not raw.strip():
        if empty is not None:
            return empty
        raise BadRequest("the request body is empty: send JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


class Api:
    """One method per route; ``routes`` lists them."""

    def __init__(self, c: Console) -> None:
        self.c = c

    # automations
    async def automations(self, request: Request) -> Response:
        q = request.query_params
        return ok(await queries.automations_page(
            self.c, q=q.get("q", ""), offset=queries.offset_of(q.get("offset")),
            limit=queries.limit_of(q.get("limit")), now=utcnow()))

    async def create(self, request: Request) -> Response:
        dry_run = _flag(request, "dry_run")
        result = await commands.apply_document(self.c, await body_json(request),
                                               dry_run=dry_run)
        return ok(result, 201 if result["created"] and not dry_run else 200)

    async def update(self, request: Request) -> Response:
        return ok(await commands.apply_document(self.c, await body_json(request),
                                                name=request.path_params["name"],
                                                dry_run=_flag(request, "dry_run")))

    async def detail(self, request: Request) -> Response:
        return ok(await queries.automation_detail(self.c, request.path_params["name"],
                                                  now=utcnow()))

    async def delete(self, request: Request) -> Response:
        return ok(await commands.delete_automation(self.c, request.path_params["name"]))

    async def pause(self, request: Request) -> Response:
        return ok(await commands.set_enabled(self.c, request.path_params["name"], False))

    async def resume(self, request: Request) -> Response:
        return ok(await commands.set_enabled(self.c, request.path_params["name"], True))

    # events
    async def events(self, request: Request) -> Response:
        q = request.query_params
        return ok(await queries.events_page(self.c, name=q.get("name", ""),
                                            label=q.get("label", ""), before=q.get("before", ""),
                                            limit=queries.limit_of(q.get("limit"))))

    async def live(self, request: Request) -> Response:
        return live.feed(self.c, request)

    async def explain(self, request: Request) -> Response:
        return ok(await queries.event_detail(self.c, request.path_params["target"],
                                             now=utcnow()))

    # dead letters
    async def dead(self, request: Request) -> Response:
        q = request.query_params
        return ok(await queries.dead_letters_page(self.c, stream=q.get("stream", ""),
                                                  before=q.get("before", ""),
                                                  limit=queries.limit_of(q.get("limit"))))

    async def letter(self, request: Request) -> Response:
        p = request.path_params
        return ok(await queries.dead_letter(self.c, p["stream"], p["id"]))

    async def retry(self, request: Request) -> Response:
        p = request.path_params
        return ok(await commands.retry_letter(self.c, p["stream"], p["id"]))

    async def purge(self, request: Request) -> Response:
        p = request.path_params
        return ok(await commands.purge_letter(self.c, p["stream"], p["id"]))

    async def purge_all(self, request: Request) -> Response:
        return ok(await commands.purge_stream(self.c, request.path_params["stream"]))

    # deployments and flow runs
    async def deployments(self, request: Request) -> Response:
        return ok(await queries.deployments_page(self.c))

    async def deployment(self, request: Request) -> Response:
        return ok(await queries.deployment_detail(self.c, request.path_params["name"]))

    async def run_now(self, request: Request) -> Response:
        body = await body_json(request, empty={})
        params = body.get("parameters", {}) if isinstance(body, dict) else None
        if not isinstance(params, dict):
            raise BadRequest('the body must be {"parameters": {...}}')
        return ok(await commands.run_deployment(self.c, request.path_params["name"], params),
                  201)

    async def pause_deployment(self, request: Request) -> Response:
        return ok(await commands.set_paused(self.c, request.path_params["name"], True))

    async def resume_deployment(self, request: Request) -> Response:
        return ok(await commands.set_paused(self.c, request.path_params["name"], False))

    async def runs(self, request: Request) -> Response:
        q = request.query_params
        return ok(await queries.runs_page(self.c, deployment=q.get("deployment", ""),
                                          state=q.get("state", ""),
                                          offset=queries.offset_of(q.get("offset")),
                                          limit=queries.limit_of(q.get("limit"))))

    async def run(self, request: Request) -> Response:
        return ok(await queries.run_detail(self.c, request.path_params["run"]))

    def routes(self) -> list[BaseRoute]:
        get, post, put, delete = ["GET"], ["POST"], ["PUT"], ["DELETE"]
        a = "/api/automations/{name:path}"
        d = "/api/dead-letters/{stream}/{id}"
        return [
            Route("/api/automations", self.automations, methods=get),
            Route("/api/automations", self.create, methods=post),
            Route(f"{a}/pause", self.pause, methods=post),
            Route(f"{a}/resume", self.resume, methods=post),
            Route(a, self.detail, methods=get),
            Route(a, self.update, methods=put),
            Route(a, self.delete, methods=delete),
            Route("/api/events", self.events, methods=get),
            Route("/api/events/live", self.live, methods=get),
            Route("/api/events/{target}", self.explain, methods=get),
            Route("/api/dead-letters", self.dead, methods=get),
            Route("/api/dead-letters/{stream}/purge", self.purge_all, methods=post),
            Route(d, self.letter, methods=get),
            Route(d, self.purge, methods=delete),
            Route(f"{d}/retry", self.retry, methods=post),
            Route(f"{d}/purge", self.purge, methods=post),
            Route("/api/deployments", self.deployments, methods=get),
            Route("/api/deployments/{name}", self.deployment, methods=get),
            Route("/api/deployments/{name}/run", self.run_now, methods=post),
            Route("/api/deployments/{name}/pause", self.pause_deployment, methods=post),
            Route("/api/deployments/{name}/resume", self.resume_deployment, methods=post),
            Route("/api/flow-runs", self.runs, methods=get),
            Route("/api/flow-runs/{run}", self.run, methods=get),
        ]


def routes(c: Console) -> list[BaseRoute]:
    return Api(c).routes()
