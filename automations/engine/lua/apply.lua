-- One engine batch, atomically: dedupe, follows ordering, every bucket update, every firing.
-- (common.lua is prepended.)
--
-- ARGV[2] specs (JSON list; see triggers/composite.py), ARGV[3] events (JSON list of
--   [id, occurred us, seen key, leader seen key or "", leader followers key or "",
--    waits (1 = may be held for its leader), own followers key, counts (1 = moves the clock),
--    ready (how many firings the engine wrote for it)]),
-- ARGV[4] ops (flat JSON list of triples event #, spec #, template #, ordered by event #),
-- ARGV[5] templates (JSON list of [bucket key, labels JSON, held key or "", after (0/1),
--   expect (0/1), unresolved key or ""], shared by the ops that use them),
-- ARGV[6..] raw event JSON, one per event (passed once, whatever the number of its ops), then
--   per event its ready firings (comma-joined JSON objects, "" if none): those of triggers
--   that keep no state, appended to its outbox entry if the event is new.
-- Header extras: ttl (seen s), held (held events hash), wl (waitlist zset), fttl (followers
--   set ttl ms), ck (events clock hash).
-- Returns {fired, processed, parked, events consumed, released raw JSON...}: the script stops
-- after the first event that releases held followers, so they are evaluated right after it.
local SPECS = cjson.decode(ARGV[2])
local EVS = cjson.decode(ARGV[3])
local OPS = cjson.decode(ARGV[4])
local TPL = cjson.decode(ARGV[5])
local NOPS = #OPS

local function hold(hk, sp, ev)
  redis.call('ZADD', hk, fmt(ev.t), ev.id .. ' ' .. ev.raw)
  redis.call('PEXPIRE', hk, math.floor((sp.w + H.held_keep) / 1000) + 3600000)
end

-- Opens a window (the caller checked that none is open), counting held expect events.
local function open(sp, key, lb, u, hk, s, e, init, ev)
  local last = ev
  if sp.p == 0 then last = nil end  -- a reactive bucket needs no last event
  local b = new_bucket(sp, key, lb, u, s, e, init, last)
  take_held(hk, b, sp)
  return b
end

-- Resolved (DESIGN.md section 5): after a top-level proactive firing for a key, the next
-- `threshold` expected events of that key resolve it.
local function resolve(sp, u, lb, ev)
  local left = redis.call('DECR', u)
  if left > 0 then return end
  redis.call('DEL', u)
  publish(sp, lb, ev.raw, ev.id, '[]', frag(sp.a, sp.t), 'Resolved')
end

-- The per-event algorithm of reference 3.3 (triggers/reference.py point 3) for one
-- (event, trigger) pair.
local function on_event(sp, key, lb, hk, u, ev)
  if sp.im == 1 then  -- reactive, within 0, threshold 1, no after: fires, keeps no state
    fire(sp, {lb = lb, u = u}, ev.raw, ev.id)
    return
  end
  if ev.E and u ~= '' and redis.call('EXISTS', u) == 1 then resolve(sp, u, lb, ev) end
  local b = live_bucket(sp, key, lb, u)
  if b and sp.af == 1 and not (sp.p == 0 and sp.w == 0) and b.e <= ev.t then
    -- an event at or beyond the end of an `after` window closes it first
    if sp.p == 1 and b.c < sp.th then
      if ev.E then
        fire(sp, b, ev.raw, ev.id)
      else
        local l, i = last_of(b)
        fire(sp, b, l, i)
      end
    end
    drop(b)
    b = nil
  end
  if ev.A and not b then
    local init = 0
    if ev.E then init = -1 end
    b = open(sp, key, lb, u, hk, ev.t, ev.t + sp.w, init, ev)
    if not ev.E then  -- an after-only event opens the window, it is not counted
      if sp.p == 0 and b.c >= sp.th then
        fire(sp, b, b.l, b.i)  -- held events already meet the reactive threshold
        drop(b)
      else
        save(sp, b)
      end
      return
    end
  elseif sp.af == 0 and ev.E and not b then
    b = open(sp, key, lb, u, '', ev.t - H.lookback, ev.t + sp.w, 0, ev)
  end
  if not ev.E then return end
  if not b then
    if hk ~= '' then hold(hk, sp, ev) end
    return
  end
  evaluate(sp, b, ev.t, ev)
end

local released = {}
local processed, parked = 0, 0
local clock = tonumber(redis.call('HGET', H.ck, 'c') or 'nil')
local globals_done = false
local any_held = redis.call('EXISTS', H.held) == 1
local oi = 1
local consumed = #EVS
for ei = 1, #EVS do
  local e = EVS[ei]
  local raw = ARGV[5 + ei]
  local go = false
  if e[4] == '' then
    go = redis.call('SET', e[3], '1', 'NX', 'EX', H.ttl) ~= false
  elseif redis.call('EXISTS', e[3]) == 0 then
    if e[6] == 1 and redis.call('EXISTS', e[4]) == 0 then
      -- the leader has not been processed: hold the follower in Redis until it is
      redis.call('SADD', e[5], e[1])
      redis.call('PEXPIRE', e[5], H.fttl)
      redis.call('HSET', H.held, e[1], raw)
      redis.call('ZADD', H.wl, 'NX', fmt(NOW), e[1])
      parked = parked + 1
      any_held = true
    else
      redis.call('SET', e[3], '1', 'EX', H.ttl)
      if redis.call('HDEL', H.held, e[1]) == 1 then redis.call('ZREM', H.wl, e[1]) end
      go = true
    end
  end
  if go and e[8] == 1 then  -- the events clock moves before the event is evaluated
    local at = math.min(e[2], NOW)
    if clock == nil or at > clock then clock = at end
    ASOF = clock
    processed = processed + 1
    if not globals_done then ensure_globals(); globals_done = true end
  end
  if go and e[9] > 0 then  -- firings the engine wrote (triggers that keep no state)
    out_entry(e[1], raw)
    OUT[#OUT + 1] = ARGV[5 + #EVS + ei]
    FIRED = FIRED + e[9]
  end
  -- one event table per event, its per-trigger fields set per op (nothing keeps it)
  local ev = {id = e[1], t = e[2], raw = raw, A = false, E = false, hk = ''}
  while oi <= NOPS and OPS[oi] == ei do
    if go then
      local o = TPL[OPS[oi + 2]]
      ev.A = o[4] == 1; ev.E = o[5] == 1; ev.hk = o[3]
      on_event(SPECS[OPS[oi + 1]], o[1], o[2], o[3], o[6], ev)
    end
    oi = oi + 3
  end
  if go and any_held then  -- nothing is held (the usual case): no followers to look up
    local followers = redis.call('SMEMBERS', e[7])
    if #followers > 0 then
      redis.call('DEL', e[7])
      for _, fid in ipairs(followers) do
        local fraw = redis.call('HGET', H.held, fid)
        if fraw then released[#released + 1] = fraw end
      end
      if #released > 0 then  -- its followers go next: the caller resends the rest after them
        consumed = ei
        break
      end
    end
  end
end

flush()
if processed > 0 then
  redis.call('HSET', H.ck, 'c', fmt(clock), 'u', fmt(NOW))
end

local out = {FIRED, processed, parked, consumed}
for _, r in ipairs(released) do out[#out + 1] = r end
return out
