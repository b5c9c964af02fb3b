-- The proactive timer and the expiry sweep (common.lua is prepended): every bucket whose
-- deadline is due "as of" now plus the events-clock offset (reference 3.7) is claimed
-- (ZREM) and handled in this one script, so with several timers each fires exactly once.
--
-- Due buckets are taken by deadline (a page of `limit`), then evaluated per automation in
-- trigger walk order, deadline and key, as the reference's proactive pass does.
-- Returns {due handled, fired, next deadline (us) or false, as_of (us)}.
local ck = redis.call('HMGET', H.ck, 'c', 'u')
if ck[1] and ck[2] then
  ASOF = NOW + math.min(0, tonumber(ck[1]) - tonumber(ck[2]))
end
local asof = ASOF
ensure_globals()

local due = redis.call('ZRANGEBYSCORE', H.dl, '-inf', fmt(asof), 'WITHSCORES',
                      'LIMIT', 0, H.limit)
local specs = {}
local items = {}
for j = 1, #due, 2 do
  local key = due[j]
  redis.call('ZREM', H.dl, key)
  local b = read_bucket(key)
  if b then
    local sp = specs[b.t]
    if sp == nil then
      local raw = redis.call('HGET', H.sk, b.t)
      sp = false
      if raw then sp = cjson.decode(raw) end
      specs[b.t] = sp
    end
    if not sp or sp.p == 0 then
      drop(b)  -- trigger gone, or a reactive bucket past its sweep time
    elseif b.c >= sp.th and (sp.fe == 1 or sp.af == 1) then
      drop(b)  -- reached its threshold: can never fire, nothing re-opens it
    else
      items[#items + 1] = {sp = sp, b = b, score = tonumber(due[j + 1])}
    end
  end
end
-- Within an automation, in trigger walk order, then deadline, then key (the order decides
-- which child firing a composite keeps when several fire at once).
table.sort(items, function(x, y)
  if x.sp.a ~= y.sp.a then return x.sp.a < y.sp.a end
  if x.sp.ix ~= y.sp.ix then return x.sp.ix < y.sp.ix end
  if x.score ~= y.score then return x.score < y.score end
  return x.b.key < y.b.key
end)
for _, it in ipairs(items) do evaluate(it.sp, it.b, asof, nil) end
flush()

local nxt = redis.call('ZRANGE', H.dl, 0, 0, 'WITHSCORES')
local nscore = false
if nxt[2] then nscore = nxt[2] end
return {#due / 2, FIRED, nscore, fmt(asof)}
