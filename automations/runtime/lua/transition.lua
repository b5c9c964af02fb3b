-- Atomically move a flow run to a new state and announce it (compare-and-set on the state id).
-- KEYS: 1 flow-runs hash, 2 active zset, 3 lease key, 4 events stream, 5 due zset, 6 runs stream
-- ARGV: 1 run id, 2 expected state id ('' = create: the run must not exist), 3 new record JSON,
--       4 new state id (= event id), 5 active '1'|'0', 6 lease ms (>0 set, 0 delete, -1 keep),
--       7 lease owner, 8 event JSON, 9 events maxlen, 10 now (score), 11 enqueue:
--       'now' (XADD to runs) | '<epoch>' (ZADD due) | '' (leave the due set)
-- Returns 1 when applied, 0 when the expected state did not match, -1 when the run is missing.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if cur then return 0 end
else
  if not cur then return -1 end
  if cjson.decode(cur)['state']['id'] ~= ARGV[2] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[10], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  redis.call('SET', KEYS[3], ARGV[7], 'PX', ttl)
elseif ttl == 0 then
  redis.call('DEL', KEYS[3])
end
if ARGV[11] == 'now' then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('XADD', KEYS[6], '*', 'id', ARGV[1])
elseif ARGV[11] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[11], ARGV[1])
else
  redis.call('ZREM', KEYS[5], ARGV[1])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'data', ARGV[8], 'id', ARGV[4])
return 1
