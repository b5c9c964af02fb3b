-- `follows` ordering and the events clock, for one engine batch (or the bounded-wait release
-- of lost followers), atomically, in the global slot. engine/ordering.py builds the inputs.
--
-- ARGV[1] header, a JSON object:
--   now     wall clock (us)
--   slice   us per arrival slice; an event id is remembered in the set of its slice
--   keep    s an arrival slice set lives
--   fttl    ms a followers set lives
--   ap      arrival set key prefix (+ slice number)
--   fp      followers set key prefix (+ leader id)
--   held    hash of held followers: id -> "<occurred us> <counts 1|0> <raw JSON>"
--   wl      waitlist zset of held followers (id -> wall us held at)
--   ck      events clock hash (c: clock us, u: wall us it was set at)
--   mode    "batch": ARGV[2] lists the batch's events; "lost": the followers held since
--           before `cutoff` (us), at most `limit`, go in (occurred, id) order
-- ARGV[2] (batch) events in stream order: {i id, o occurred us, f follows id or "",
--   w may wait, c counts for the clock, r ARGV index of its raw JSON (followers only) or 0}
--
-- An event goes unless it follows a leader that has not arrived (within the kept slices) and
-- may wait: it is then held. An event that goes is marked arrived and releases its held
-- followers, which go right after it (recursively, in (occurred, id) order). Released
-- followers stay held (and their leader's followers set stays) until the engine has applied
-- them and calls `forget`: a failure in between releases them again (the partitions dedupe).
--
-- Returns {parked, new, rows...}: per event that goes, in evaluation order, 4 values:
--   source: a batch index (1-based number as a string) or "" for a released follower
--   raw:    the released follower's raw JSON ("" for a batch event)
--   asof:   the events clock (us) once the event is counted
--   leader: the id of the event that released it ("" for a batch event or a lost one)
local H = cjson.decode(ARGV[1])
local NOW = H.now
local SL = math.floor(NOW / H.slice)
local CUR = H.ap .. string.format('%.0f', SL)

local function fmt(n) return string.format('%.0f', n) end

local clock = tonumber(redis.call('HGET', H.ck, 'c') or 'nil')
local rows = {}
local parked, new, moved = 0, 0, false
local any_held = redis.call('EXISTS', H.held) == 1
local skip = {}  -- lost mode: the claimed followers keep their own place

local function arrived(id)
  for s = SL, SL - 2, -1 do
    if redis.call('SISMEMBER', H.ap .. fmt(s), id) == 1 then return true end
  end
  return false
end

-- "<occurred> <counts> <raw>" -> occurred, counts, raw
local function unpack_held(v)
  local a = string.find(v, ' ', 1, true)
  local b = string.find(v, ' ', a + 1, true)
  return tonumber(string.sub(v, 1, a - 1)), string.sub(v, a + 1, b - 1) == '1',
    string.sub(v, b + 1)
end

local function by_time(x, y)
  if x.o ~= y.o then return x.o < y.o end
  return x.id < y.id
end

local go

-- The held followers of `id`, in (occurred, id) order.
local function release(id)
  if not any_held then return end
  local fids = redis.call('SMEMBERS', H.fp .. id)
  if #fids == 0 then return end
  local vals = redis.call('HMGET', H.held, unpack(fids))
  local items = {}
  for k, fid in ipairs(fids) do
    if vals[k] and not skip[fid] then
      local o, c, raw = unpack_held(vals[k])
      items[#items + 1] = {id = fid, o = o, c = c, raw = raw}
    end
  end
  table.sort(items, by_time)
  for _, it in ipairs(items) do go('', it.raw, it.id, it.o, it.c, id) end
end

go = function(source, raw, id, occurred, counts, leader)
  if redis.call('SADD', CUR, id) == 1 then
    new = new + 1
    if counts then
      local at = math.min(occurred, NOW)
      if clock == nil or at > clock then clock = at end
      moved = true
    end
  end
  rows[#rows + 1] = source
  rows[#rows + 1] = raw
  rows[#rows + 1] = fmt(clock or NOW)
  rows[#rows + 1] = leader
  release(id)
end

if H.mode == 'lost' then
  local ids = redis.call('ZRANGEBYSCORE', H.wl, '-inf', fmt(H.cutoff), 'LIMIT', 0, H.limit)
  local items = {}
  if #ids > 0 then
    local vals = redis.call('HMGET', H.held, unpack(ids))
    for k, id in ipairs(ids) do
      if vals[k] then
        local o, c, raw = unpack_held(vals[k])
        items[#items + 1] = {id = id, o = o, c = c, raw = raw}
        skip[id] = true
      else
        redis.call('ZREM', H.wl, id)  -- forgotten meanwhile
      end
    end
  end
  table.sort(items, by_time)
  for _, it in ipairs(items) do go('', it.raw, it.id, it.o, it.c, '') end
else
  local evs = cjson.decode(ARGV[2])
  for n, e in ipairs(evs) do
    local hold = false
    if e.f ~= '' and e.w and not arrived(e.f) and not arrived(e.i) then hold = true end
    if hold then
      redis.call('SADD', H.fp .. e.f, e.i)
      redis.call('PEXPIRE', H.fp .. e.f, H.fttl)
      local c = '0'
      if e.c then c = '1' end
      redis.call('HSET', H.held, e.i, fmt(e.o) .. ' ' .. c .. ' ' .. ARGV[e.r])
      redis.call('ZADD', H.wl, 'NX', fmt(NOW), e.i)
      parked = parked + 1
      any_held = true
    else
      go(tostring(n), '', e.i, e.o, e.c, '')
    end
  end
end

if #rows > 0 then redis.call('EXPIRE', CUR, H.keep) end
if moved then redis.call('HSET', H.ck, 'c', fmt(clock), 'u', fmt(NOW)) end
local out = {parked, new}
for _, v in ipairs(rows) do out[#out + 1] = v end
return out
