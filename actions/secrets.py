"""Named secrets (blocks) and the redaction applied to every error, event and log line.

A block is a name -> URL (an Apprise URL, a webhook URL) stored in the ``<p>:blocks`` hash
or given as the environment variable ``AUTOMATIONS_BLOCK_<NAME>`` (name upper-cased, every
character other than a letter or digit replaced by ``_``). Stored blocks win over the
environment. Values are never logged: executors register every value they resolve with the
action's ``Redactor``, and the dispatcher passes every message through it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from actions.outcome import PermanentError, Reason

ENV_PREFIX = "AUTOMATIONS_BLOCK_"
MASK = "***"
_MIN_FRAGMENT = 6
"""Shorter URL fragments are not registered: masking "api" or "hooks" everywhere helps nobody."""

SENSITIVE_HEADER_WORDS = ("auth", "token", "secret", "key", "cookie", "password", "signature",
                          "session", "credential")


def env_name(block: str) -> str:
    """The environment variable holding block ``block``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", block).upper()


def is_sensitive_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_HEADER_WORDS)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers with the values of sensitive ones (Authorization, Cookie, X-Api-Key...) masked."""
    return {k: (MASK if is_sensitive_header(k) else v) for k, v in headers.items()}


def url_fragments(url: str) -> list[str]:
    """The parts of a URL that may be credentials: the whole URL, user info, long path
    segments and query values (Slack tokens live in the path, API keys in the query)."""
    found = [url]
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    if parts.password:
        found.append(parts.password)
    if parts.username and len(parts.username) >= _MIN_FRAGMENT:
        found.append(parts.username)
    segments = [parts.netloc.rpartition("@")[2], *parts.path.split("/")]
    found.extend(s for s in segments if len(s) >= _MIN_FRAGMENT and not _is_hostlike(s))
    found.extend(v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_FRAGMENT)
    return found + [unquote(f) for f in found if unquote(f) != f]


def _is_hostlike(segment: str) -> bool:
    # Host names ("127.0.0.1:8080", "hooks.slack.com") are not secrets; tokens rarely hold dots.
    return "." in segment and not segment.startswith(".")


def display_url(url: str) -> str:
    """A URL safe to show: user info and query values masked, path kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return parts._replace(netloc=netloc, query=query, fragment="").geturl()


class Redactor:
    """Scrubs every registered secret (and its URL fragments) out of text, longest first."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []

    def add(self, secret: str, *, url: bool = True) -> None:
        """Register a secret; when it is a URL, its credential-like fragments too."""
        new = url_fragments(secret) if url else [secret]
        if self._secrets.issuperset(new):
            return
        self._secrets.update(s for s in new if s)
        self._ordered = sorted(self._secrets, key=len, reverse=True)

    def add_inline_url(self, url: str) -> None:
        """An inline URL is not a secret, but its password and query values may be."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return
        found = [parts.password] if parts.password else []
        found.extend(v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_FRAGMENT)
        for value in found:
            self.add(value, url=False)

    def redact(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} fragments)"


async def resolve_block(blocks: _BlockGetter, name: str, redactor: Redactor) -> str:
    """The block's value, registered with ``redactor``; a missing block is permanent."""
    value = await blocks.get(name)
    if value is None:
        raise PermanentError(
            Reason.MISSING_SECRET,
            f"block '{name}' is not stored (automations blocks set) and {env_name(name)} "
            "is not set",
        )
    redactor.add(value)
    return value


class _BlockGetter(Protocol):
    """What ``resolve_block`` asks of a block store (``automations.blocks.BlockStore``)."""

    async def get(self, name: str, /) -> str | None: ...
