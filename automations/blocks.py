"""Named secrets (blocks) in Redis: the ``<p>:blocks`` hash, falling back to the environment
(``AUTOMATIONS_BLOCK_<NAME>``, see ``actions.secrets.env_name``). Values are never logged."""

from __future__ import annotations

import os
from collections.abc import Mapping

import redis.asyncio as aioredis

from actions.secrets import ENV_PREFIX, env_name
from automations.keys import Keys


class BlockStore:
    """Blocks in Redis (``<p>:blocks`` hash), falling back to ``AUTOMATIONS_BLOCK_<NAME>``."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *,
                 environ: Mapping[str, str] | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._environ = os.environ if environ is None else environ

    async def get(self, name: str, /) -> str | None:
        raw = await self._redis.hget(self._keys.blocks, name)
        if raw is not None:
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        return self._environ.get(env_name(name))

    async def set(self, name: str, value: str) -> None:
        if not name.strip():
            raise ValueError("a block name may not be empty")
        await self._redis.hset(self._keys.blocks, name, value)

    async def delete(self, name: str) -> bool:
        return bool(await self._redis.hdel(self._keys.blocks, name))

    async def names(self) -> list[str]:
        """Stored names, sorted."""
        raw = await self._redis.hkeys(self._keys.blocks)
        stored = {k.decode() if isinstance(k, bytes) else str(k) for k in raw}
        return sorted(stored)


def env_block_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``AUTOMATIONS_BLOCK_*`` variables that are set (names only)."""
    return sorted(k for k in (os.environ if environ is None else environ)
                  if k.startswith(ENV_PREFIX))
