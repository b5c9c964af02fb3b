-- Move flow runs whose start time has come from the due set to the runs stream, exactly once.
-- KEYS: 1 due zset, 2 runs stream.  ARGV: 1 now (epoch seconds), 2 limit.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'id', id)
end
return #ids
