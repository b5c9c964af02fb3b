"""Dead-lettering a consumer group's entries: each is copied to the dead stream, with why and
how often it was delivered and where it came from, and acknowledged, in one script, so an
entry is never both lost and acked (a script, not MULTI: redis-py's cluster transactions fail
while their slot migrates). ``automations dead-letters`` reads and re-drives them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from automations.metrics import Metrics
from automations.streams.entries import Reject

log = logging.getLogger(__name__)

# KEYS: dead stream, stream. ARGV: group, then per entry: its id, its field count n, n
# field/value pairs. Copies each entry to the dead stream and acks it, together.
DEAD_LETTER_SCRIPT = """
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 2, i + 1 + 2 * n))
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[i])
  i = i + 2 + 2 * n
end
return 1
"""


class DeadLetters:
    """One consumer's dead-lettering: ``stream``'s entries of ``group`` go to ``dead_stream``."""

    def __init__(self, redis: aioredis.Redis, *, stream: str, group: str, consumer: str,
                 dead_stream: str) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_stream = dead_stream
        self._script = redis.register_script(DEAD_LETTER_SCRIPT)

    async def send(self, rejects: Sequence[Reject], metrics: Metrics) -> None:
        """Copy each entry, with reason and delivery count, to the dead stream and ack it
        (one script, so an entry is never both lost and acked)."""
        args: list[Any] = [self.group]
        for r in rejects:
            fields: dict[Any, Any] = dict(r.entry.fields)
            fields.update({
                b"reason": r.reason.encode(), b"deliveries": str(r.entry.deliveries).encode(),
                b"source_stream": self.stream.encode(), b"source_id": r.entry.id.encode(),
                b"group": self.group.encode(), b"consumer": self.consumer.encode(),
            })
            args += [r.entry.id, len(fields), *(x for pair in fields.items() for x in pair)]
        await self._script(keys=[self.dead_stream, self.stream], args=args)
        metrics.dead_lettered(self.dead_stream, len(rejects))
        log.warning("%s/%s: dead-lettered %d entries to %s (first: %s %s)", self.stream,
                    self.group, len(rejects), self.dead_stream, rejects[0].entry.id,
                    rejects[0].reason, extra={
                        "stream": self.stream, "group": self.group,
                        "dead_stream": self.dead_stream,
                        "entry_ids": [r.entry.id for r in rejects[:20]],
                        "reason": rejects[0].reason})
