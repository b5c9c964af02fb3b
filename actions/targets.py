"""Pure checks of action targets: webhook URLs and block names (no Redis, no network).

``validate``/``apply`` use them to refuse a target that could never work; the webhook executor
uses ``webhook_url_problem`` to fail a non-HTTP URL (from a block, say) at once instead of
retrying it. Messages never repeat a URL: a block's URL is a secret, and an inline one may hold
a token in its path.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from actions.secrets import env_name

WEBHOOK_SCHEMES = frozenset({"http", "https"})


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target (only ``http://`` and ``https://`` with a host),
    or None when it can."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    scheme = parts.scheme.lower()
    if "://" not in url:
        return "not an http:// or https:// URL (write it as https://host/path)"
    if scheme not in WEBHOOK_SCHEMES:
        return f"webhooks need an http:// or https:// URL, not {scheme}://"
    if not host:
        return "the URL has no host"
    return None


@dataclass(frozen=True, slots=True)
class KnownBlocks:
    """The blocks an action may name: the stored names, and the ``AUTOMATIONS_BLOCK_*``
    variables set in the environment (``actions.secrets.env_name``)."""

    stored: frozenset[str]
    env_vars: frozenset[str]

    @classmethod
    def of(cls, stored: Collection[str], env_vars: Collection[str]) -> KnownBlocks:
        return cls(frozenset(stored), frozenset(env_vars))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.stored or env_name(name) in self.env_vars)

    def block_problem(self, name: str) -> str | None:
        """Why ``name`` cannot be resolved, or None when it can."""
        if name in self:
            return None
        return (f"unknown block {name!r}: not stored (automations blocks set {name}) and "
                f"{env_name(name)} is not set")
