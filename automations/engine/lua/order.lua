-- `follows` ordering and the events clock, for one engine batch (or the bounded-wait release
-- of lost followers), atomically, in the global slot. engine/ordering.py builds the inputs
-- and rebuilds the order from the reply.
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
--   es      the events stream (a held follower's raw JSON is copied from its entry)
--   mode    "batch": ARGV[2..3] list the batch's events; "lost": the followers held since
--           before `cutoff` (us), at most `limit`, go in (occurred, id) order
-- ARGV[2] (batch) the events in stream order, flat: id, occurred us, flags (1: counts for
--   the clock, 2: a follower that may wait), ...
-- ARGV[3] (batch) the followers, flat: event number (1-based), leader id, its events-stream
--   entry id, ...
--
-- An event goes unless it follows a leader that has not arrived (within the kept slices) and
-- may wait: it is then held. An event that goes is marked arrived and releases its held
-- followers, which go right after it (recursively, in (occurred, id) order). Released
-- followers stay held (and their leader's followers set stays) until the engine has applied
-- them and calls `forget`: a failure in between releases them again (the partitions dedupe).
--
-- Returns {parked, new, clock before the call (us, "" when unset), exceptions...}. Events not
-- named by an exception went, in order, for the first time. Exceptions, in evaluation order:
--   "h", n                                 event n was held
--   "d", n                                 event n went, but had arrived before
--   "r", n, raw, leader, occurred, flags   a released follower went right after event n (0:
--                                          a lost follower); flags 1 counts, 4 a repeat
local H = cjson.decode(ARGV[1])
local NOW = H.now
local SL = math.floor(NOW / H.slice)

local function fmt(n) return string.format('%.0f', n) end

local CUR = H.ap .. fmt(SL)
local stored = redis.call('HGET', H.ck, 'c')
local clock = tonumber(stored or 'nil')
local out = {0, 0, stored or ''}
local parked, new, moved = 0, 0, false
local any_held = redis.call('EXISTS', H.held) == 1
local skip = {}  -- lost mode: the claimed followers keep their own place

local function arrived(id)
  for s = SL, SL - 2, -1 do
    if redis.call('SISMEMBER', H.ap .. fmt(s), id) == 1 then return true end
  end
  return false
end

-- Marks `id` arrived; true when it is new (then a counted event moves the clock).
local function arrive(id, occurred, counts)
  if redis.call('SADD', CUR, id) == 0 then return false end
  new = new + 1
  if counts then
    local at = math.min(occurred, NOW)
    if clock == nil or at > clock then clock = at end
    moved = true
  end
  return true
end

-- "<occurred> <counts> <raw>" -> occurred, counts, raw
local function unpack_held(v)
  local a = string.find(v, ' ', 1, true)
  local b = string.find(v, ' ', a + 1, true)
  return tonumber(string.sub(v, 1, a - 1)), string.sub(v, a + 1, b - 1) == '1',
    string.sub(v, b + 1)
end

-- The raw JSON of an events-stream entry (nil if it is gone).
local function raw_of(entry)
  local got = redis.call('XRANGE', H.es, entry, entry)
  if #got == 0 then return nil end
  local fields = got[1][2]
  for k = 1, #fields, 2 do
    if fields[k] == 'data' then return fields[k + 1] end
  end
  return nil
end

local function by_time(x, y)
  if x.o ~= y.o then return x.o < y.o end
  return x.id < y.id
end

local release

-- A follower goes: it arrives, is reported after event `after`, releases its own followers.
local function go_released(after, it, leader)
  local flags = 0
  if it.c then flags = 1 end
  if not arrive(it.id, it.o, it.c) then flags = flags + 4 end
  out[#out + 1] = 'r'; out[#out + 1] = after; out[#out + 1] = it.raw
  out[#out + 1] = leader; out[#out + 1] = fmt(it.o); out[#out + 1] = flags
  release(after, it.id)
end

-- The held followers of `id` go, in (occurred, id) order.
release = function(after, id)
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
  for _, it in ipairs(items) do go_released(after, it, id) end
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
  for _, it in ipairs(items) do go_released(0, it, '') end
else
  local evs = cjson.decode(ARGV[2])
  local followers = {}  -- event number -> {leader, raw index}
  local fl = cjson.decode(ARGV[3])
  for j = 1, #fl, 3 do followers[fl[j]] = {fl[j + 1], fl[j + 2]} end
  local n = 0
  for j = 1, #evs, 3 do
    n = n + 1
    local id, occurred, flags = evs[j], evs[j + 1], evs[j + 2]
    local counts = flags % 2 == 1
    local f = followers[n]
    local raw = nil
    if f and not arrived(f[1]) and not arrived(id) then raw = raw_of(f[2]) end
    if raw then
      redis.call('SADD', H.fp .. f[1], id)
      redis.call('PEXPIRE', H.fp .. f[1], H.fttl)
      local c = '0'
      if counts then c = '1' end
      redis.call('HSET', H.held, id, fmt(occurred) .. ' ' .. c .. ' ' .. raw)
      redis.call('ZADD', H.wl, 'NX', fmt(NOW), id)
      parked = parked + 1
      any_held = true
      out[#out + 1] = 'h'; out[#out + 1] = n
    else
      if not arrive(id, occurred, counts) then
        out[#out + 1] = 'd'; out[#out + 1] = n
      end
      release(n, id)
    end
  end
end

if new > 0 then redis.call('EXPIRE', CUR, H.keep) end
if moved then redis.call('HSET', H.ck, 'c', fmt(clock), 'u', fmt(NOW)) end
out[1] = parked
out[2] = new
return out
