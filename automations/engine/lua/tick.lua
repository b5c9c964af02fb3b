-- The proactive timer and the expiry sweep of one partition (common.lua is prepended): the
-- buckets the timer found due "as of" now plus the events-clock offset (reference 3.7,
-- header `asof`; ARGV[2], a JSON list of keys) that are still due are claimed (ZREM) and
-- handled in this one script, so with several timers each fires exactly once.
--
-- They are evaluated per automation in trigger walk order, deadline and key, as the
-- reference's proactive pass does. KEYS: as in apply.lua.
-- Returns {due handled, fired, next deadline (us) or false, as_of (us)}.
ASOF = H.asof
local asof = ASOF
ensure_globals()

local due = cjson.decode(ARGV[2])
local specs = {}
local items = {}
local claimed = 0
for _, key in ipairs(due) do
  local score = tonumber(rcall('ZSCORE', H.dl, key) or 'nil')
  local b = nil
  if score and score <= asof then  -- still due, and not taken by another timer
    rcall('ZREM', H.dl, key)
    claimed = claimed + 1
    b = read_bucket(key)
  end
  if b then
    local sp = specs[b.t]
    if sp == nil then
      local raw = rcall('HGET', H.sk, b.t)
      sp = false
      if raw then sp = cjson.decode(raw) end
      specs[b.t] = sp
    end
    if not sp or sp.p == 0 then
      drop(b)  -- trigger gone, or a reactive bucket past its sweep time
    elseif b.c >= sp.th and (sp.fe == 1 or sp.af == 1) then
      drop(b)  -- reached its threshold: can never fire, nothing re-opens it
    else
      b.u = unresolved_key(sp, b)
      items[#items + 1] = {sp = sp, b = b, score = score}
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

local nxt = rcall('ZRANGE', H.dl, 0, 0, 'WITHSCORES')
local nscore = false
if nxt[2] then nscore = nxt[2] end
return {claimed, FIRED, nscore, fmt(asof)}
