-- One engine batch, atomically: dedupe, follows ordering, every bucket update, every firing.
-- (common.lua is prepended.) window.py builds the inputs (WindowBatch, EventItem, OpTemplate)
-- with the names used here.
--
-- ARGV[2] specs: JSON object, WindowSpec.ref -> spec (fields: automations/engine/specs.py),
--   its `ch` a list of refs into ARGV[5].
-- ARGV[3] events, in evaluation order (engine/ordering.py decided it), as one flat JSON array
--   (a table per event or template would cost more than its fields): per event these fields
--   (E_* offsets, named as in window.py), then its E_OPS op templates (numbers into ARGV[4]),
--   in evaluation order:
--   E_ID              event id
--   E_OCCURRED        occurred (us)
--   E_ASOF            the events clock (us) once it is counted
--   E_READY           how many firings the engine wrote for it (triggers keeping no state)
--   E_OPS             how many ops follow
-- ARGV[4] op templates, shared by the ops that use them, as one flat JSON array: template n's
--   fields at (n - 1) * TEMPLATE_FIELDS + these offsets, named as in window.py:
--   T_SPEC            the trigger's spec (a key of ARGV[2])
--   T_BUCKET          bucket key
--   T_LABELS          triggering labels JSON
--   T_HELD            held expect events key, "" without after
--   T_AFTER           true: the event opens a window
--   T_EXPECT          true: the event is counted
--   T_UNRESOLVED      Resolved counter key of a top-level proactive trigger, else ""
-- ARGV[5] the specs' composite links: JSON object, ref -> link (shared by siblings, sent once)
-- ARGV[6 ..] the raw JSON of every event (passed apart: not escaped into ARGV[3]), then per
--   event its ready firings (comma-joined JSON objects, "" if none), appended to its outbox
--   entry if the event is new.
-- Dedupe (engine/dedupe.py), header fields: `ss` the sets of evaluated ids looked at, `sc` the
-- one this call adds to, `sx` its expiry (s from now), `lg` "" or the prefix of the one-key
-- markers also written and looked at (the versions before's, for a while after an upgrade).
-- KEYS: on a Redis Cluster every key the call touches (Redis then refuses the call as a whole
-- while the partition's slot migrates); else the outbox alone, which names the slot.
-- Returns {fired, evaluated}: evaluated counts the events new to this partition.
local SPECS = cjson.decode(ARGV[2])
local EVS = cjson.decode(ARGV[3])
local TPL = cjson.decode(ARGV[4])
local E_ID, E_OCCURRED, E_ASOF, E_READY, E_OPS = 0, 1, 2, 3, 4
local E_FIELDS = 5
local T_SPEC, T_BUCKET, T_LABELS, T_HELD, T_AFTER, T_EXPECT, T_UNRESOLVED = 1, 2, 3, 4, 5, 6, 7
local TEMPLATE_FIELDS = 7
local LINKS = cjson.decode(ARGV[5])
for _, sp in pairs(SPECS) do  -- each spec's chain: its links
  local chain = sp.ch
  if chain then
    for i = 1, #chain do chain[i] = LINKS[chain[i]] end
  end
end
local RAW_AT = 5  -- ARGV[RAW_AT + i]: event i's raw JSON
local READY_AT = RAW_AT + (#ARGV - RAW_AT) / 2  -- ARGV[READY_AT + i]: event i's ready firings

local function hold(hk, sp, ev)
  rcall('ZADD', hk, fmt(ev.t), ev.id .. ' ' .. ev.raw)
  rcall('PEXPIRE', hk, math.floor((sp.w + H.held_keep) / 1000) + 3600000)
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
  local left = rcall('DECR', u)
  if left > 0 then return end
  rcall('DEL', u)
  publish(sp, lb, ev.raw, ev.id, '[]', sp.t, 'Resolved')
end

-- The per-event algorithm of reference 3.3 (triggers/reference.py point 3) for one
-- (event, trigger) pair.
local function on_event(sp, key, lb, hk, u, ev)
  if sp.im == 1 then  -- reactive, within 0, threshold 1, no after: fires, keeps no state
    fire(sp, {lb = lb, u = u}, ev.raw, ev.id)
    return
  end
  if ev.E and u ~= '' and rcall('EXISTS', u) == 1 then resolve(sp, u, lb, ev) end
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

-- The ids evaluated before (SEEN: id -> true), one SMISMEMBER a set for the call's events; the
-- ids this call evaluates (ADDED) go into the current set after the loop.
local SEEN, ADDED = {}, {}
do
  local ids = {}
  local at = 1
  while at <= #EVS do
    ids[#ids + 1] = EVS[at + E_ID]
    at = at + E_FIELDS + EVS[at + E_OPS]
  end
  for _, set in ipairs(H.ss) do
    for i = 1, #ids, 1000 do
      local j = math.min(i + 999, #ids)
      local found = rcall('SMISMEMBER', set, unpack(ids, i, j))
      for k = i, j do
        if found[k - i + 1] == 1 then SEEN[ids[k]] = true end
      end
    end
  end
end
local LEGACY = H.lg
local SEEN_TTL = fmt(H.ttl)

-- True once per id not evaluated before: it is then marked (and, while the one-key markers of
-- the versions before are in use, their key set: one of them may have evaluated it).
local function first_time(id)
  if SEEN[id] then return false end
  SEEN[id] = true
  if LEGACY ~= '' and not rcall('SET', LEGACY .. id, '1', 'NX', 'EX', SEEN_TTL) then
    return false
  end
  ADDED[#ADDED + 1] = id
  return true
end

local evaluated = 0
local globals_done = false
local at, ei = 1, 0  -- EVS[at]: the first field of event ei + 1
while at <= #EVS do
  ei = ei + 1
  local first, last = at + E_FIELDS, at + E_FIELDS + EVS[at + E_OPS] - 1  -- its ops
  local id, ready = EVS[at + E_ID], EVS[at + E_READY]
  local raw = ARGV[RAW_AT + ei]
  if first_time(id) then
    evaluated = evaluated + 1
    ASOF = EVS[at + E_ASOF]
    if not globals_done then ensure_globals(); globals_done = true end
    if ready > 0 then  -- firings the engine wrote (triggers that keep no state)
      out_entry(id, raw)
      out_add(ARGV[READY_AT + ei])
      FIRED = FIRED + ready
    end
    -- one event table per event, its per-trigger fields set per op (nothing keeps it)
    local ev = {id = id, t = EVS[at + E_OCCURRED], raw = raw, A = false, E = false, hk = ''}
    for k = first, last do
      local o = (EVS[k] - 1) * TEMPLATE_FIELDS
      local hk = TPL[o + T_HELD]
      ev.A = TPL[o + T_AFTER]; ev.E = TPL[o + T_EXPECT]; ev.hk = hk
      on_event(SPECS[TPL[o + T_SPEC]], TPL[o + T_BUCKET], TPL[o + T_LABELS], hk,
               TPL[o + T_UNRESOLVED], ev)
    end
  end
  at = last + 1
end

flush()
if #ADDED > 0 then
  batched('SADD', H.sc, ADDED)
  rcall('EXPIRE', H.sc, H.sx)
end
return {FIRED, evaluated}
