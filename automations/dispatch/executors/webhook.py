"""call-webhook: one HTTP request through the dispatcher's pooled aiohttp session.

The target is an inline ``url`` or a stored block (``block`` / ``block_document_id``), whose
URL is a secret. A JSON-object payload is sent as JSON (rendered field by field), a string
payload as text. An ``Idempotency-Key: <firing id>:<action index>`` header lets the receiver
drop the rare repeat after a crash between the request and the done record. The status, the
first 1,000 characters of the body and the response headers (sensitive ones masked) are
recorded; redirects are not followed. A target that is not an ``http(s)://`` URL (a block
may hold anything) fails at once as ``invalid-target``: retrying cannot fix it.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from actions.models import CallWebhook
from actions.outcome import PermanentError, Reason, TransientError, classify_http
from actions.secrets import display_url, is_sensitive_header, redact_headers, resolve_block
from actions.targets import webhook_url_problem
from automations.dispatch.ports import ActionContext, ActionResult

MAX_BODY_CHARS = 1000
_READ_BYTES = 4 * MAX_BODY_CHARS
IDEMPOTENCY_HEADER = "Idempotency-Key"


async def resolve_url(action: CallWebhook, ctx: ActionContext) -> tuple[str, str]:
    """(URL, how to show it) for the action's target."""
    name = action.block or (str(action.block_document_id) if action.block_document_id else None)
    if name is not None:
        return await resolve_block(ctx.ports.blocks, name, ctx.redactor), f"block:{name}"
    assert action.url is not None  # the model guarantees exactly one target
    ctx.redactor.add_inline_url(action.url)
    return action.url, display_url(action.url)


def build_body(action: CallWebhook, headers: dict[str, str]) -> bytes | None:
    if isinstance(action.payload, dict):
        headers.setdefault("Content-Type", "application/json")
        return orjson.dumps(action.payload)
    if action.payload == "":
        return None
    headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    return action.payload.encode()


async def execute(action: CallWebhook, ctx: ActionContext) -> ActionResult:
    url, shown = await resolve_url(action, ctx)
    problem = webhook_url_problem(url)
    if problem is not None:
        raise PermanentError(Reason.INVALID_TARGET, f"webhook target {shown}: {problem}",
                             details={"url": shown})
    headers = dict(action.headers)
    for name, value in headers.items():
        if is_sensitive_header(name):
            ctx.redactor.add(value, url=False)
    headers.setdefault(IDEMPOTENCY_HEADER, ctx.idempotency_key)
    body = build_body(action, headers)
    timeout = action.timeout_seconds or ctx.action_timeout_s
    status, response_headers, raw = await _request(ctx, action.method, url, body, headers,
                                                   timeout)
    details: dict[str, Any] = {
        "method": action.method,
        "url": shown,
        "status_code": status,
        "response_body": raw.decode(errors="replace")[:MAX_BODY_CHARS],
        "response_headers": redact_headers(response_headers),
    }
    error = classify_http(status, response_headers, what="webhook")
    if error is not None:
        error.details.update(details)
        raise error
    related = []
    if shown.startswith("block:"):
        related.append({"prefect.resource.id": f"prefect.block-document.{shown[6:]}",
                        "prefect.resource.role": "block",
                        "prefect.resource.name": shown[6:]})
    return ActionResult(details=details, related=related)


async def _request(
    ctx: ActionContext, method: str, url: str, body: bytes | None, headers: dict[str, str],
    timeout: float,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, start of the body); transport failures raised classified."""
    try:
        async with ctx.clients.http.request(
            method, url, data=body, headers=headers, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            raw = await _read_start(response)
            return response.status, {str(k): v for k, v in response.headers.items()}, raw
    except TimeoutError:
        raise TransientError(Reason.TIMEOUT, f"webhook timed out after {timeout:g}s") from None
    except (aiohttp.InvalidURL, ValueError) as exc:  # the dispatcher redacts the message
        raise PermanentError(Reason.INVALID_TARGET, f"invalid webhook request: {exc}") from None
    except aiohttp.ClientError as exc:
        raise TransientError(Reason.CONNECTION,
                             f"webhook connection failed: {type(exc).__name__}: {exc}") from None


async def _read_start(response: aiohttp.ClientResponse) -> bytes:
    """Up to ``_READ_BYTES`` of the body; the rest is not read (a huge body costs nothing)."""
    data = bytearray()
    while len(data) < _READ_BYTES:
        chunk = await response.content.read(_READ_BYTES - len(data))
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)
