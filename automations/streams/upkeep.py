"""Stream upkeep shared by the consumer and the publishers: the server version gate and safe
trimming (never past an entry a group still needs)."""

from __future__ import annotations

import redis.asyncio as aioredis

from automations.errors import AutomationsError

MIN_REDIS = (6, 2)
TRIM_STEP = 2000  # surplus entries a trim finds exactly (read once by one XRANGE)


class RedisTooOld(AutomationsError):
    """The server lacks a command we rely on (XAUTOCLAIM needs Redis 6.2)."""


async def require_redis_version(client: aioredis.Redis) -> str:
    """Check INFO server once; raise ``RedisTooOld`` with a clear message below 6.2."""
    info = await client.info("server")
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS:
        raise RedisTooOld(
            f"Redis {version} is too old: automations needs Redis >= 6.2 (XAUTOCLAIM)"
        )
    return version


# Trims what every group has acknowledged, down to about ARGV[1] entries (never fewer). The
# cut is exact for up to ARGV[2] surplus entries (one XRANGE); a larger surplus (after an
# outage, or while the engine appends announcements faster than a burst drains) is also halved
# by interpolating the ids' timestamps, whichever cut goes further: so every call removes at
# least about ARGV[2] entries (an interpolated guess alone can land inside the first node and
# remove nothing) and repeated calls converge without reading the whole stream. The cut never
# passes a group's oldest pending entry nor its first undelivered one; XTRIM MINID ~ then
# removes whole nodes only.
TRIM_SCRIPT = """
local stream = KEYS[1]
local maxlen = tonumber(ARGV[1])
local step = tonumber(ARGV[2])
local len = redis.call('XLEN', stream)
if len <= maxlen then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local excess = len - maxlen
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(excess, step))
local cut_ms, cut_seq = parse(oldest[#oldest][1])
cut_seq = cut_seq + 1
if excess > step then
  local f_ms = parse(oldest[1][1])
  local l_ms = parse(redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1][1])
  local guess = f_ms + math.floor((l_ms - f_ms) * excess / (2 * len))
  if guess > cut_ms then cut_ms, cut_seq = guess, 0 end
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local ms, seq
  if tonumber(info['pending']) > 0 then
    local oldest = redis.call('XPENDING', stream, info['name'], '-', '+', 1)
    ms, seq = parse(oldest[1][1])
  else
    ms, seq = parse(info['last-delivered-id'])
    seq = seq + 1
  end
  if ms < cut_ms or (ms == cut_ms and seq < cut_seq) then
    cut_ms, cut_seq = ms, seq
  end
end
-- LIMIT 0: without it, an approximate XTRIM removes at most 100 nodes (10,000 entries) a call,
-- slower than a busy engine appends; freeing whole nodes is cheap (about 1 ms per 100,000).
return redis.call('XTRIM', stream, 'MINID', '~', string.format('%d-%d', cut_ms, cut_seq),
                  'LIMIT', 0)
"""

async def trim_acknowledged(client: aioredis.Redis, stream: str, maxlen: int) -> int:
    """Trim ``stream`` towards ``maxlen`` without dropping anything a group still needs."""
    removed = await client.eval(TRIM_SCRIPT, 1, stream, maxlen, TRIM_STEP)
    return int(removed)
