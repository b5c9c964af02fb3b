-- Shared window state machine (reference sections 3.3, 3.4, 3.11, 3.13), prepended to
-- apply.lua and tick.lua by automations/engine/window.py. Everything here runs inside ONE
-- script call, so a bucket's read-modify-write and the firing it causes (firings stream =
-- outbox) are a single atomic step.
--
-- Times are integer microseconds (exact in a Lua double); they are always written with
-- fmt() because Redis would format a Lua number with 14 significant digits ('%d': integers
-- only, formatted exactly and at half the cost of '%.0f').
--
-- One call touches one partition (its keys share a hash tag). ARGV[1] is the header, a JSON
-- object (window.py, Window._header), the same for both scripts:
--   now        wall clock (us)
--   iso        wall clock (ISO 8601), the firings' `triggered`
--   idb        28-char uuid7 base of the ids the script makes (newid)
--   fs         the partition's firings stream (the outbox)
--   dl         deadlines zset (bucket key -> due us)
--   gl         hash trigger id -> spec, global proactive triggers (ensure_globals)
--   sk         hash trigger id -> spec, every enabled trigger (the timer's lookup)
--   bp, up     what every bucket key, and every unresolved counter's key, of the partition
--              starts with (keys.py): a bucket stores neither its trigger id nor its
--              counter's key, the timer reads them off its key (read_bucket)
--   sweep      us a reactive bucket lives past its end
--   lookback   us a first window is backdated by
--   held_keep  us a held expect event outlives its window
--   uttl       s an unresolved proactive firing waits for its resolution
--   ttl        s a one-key dedupe marker lives (the versions before's, engine/dedupe.py)
--   asof       tick.lua only: the events clock "as of" time (us)
-- Spec fields (sp.a, sp.th, sp.ch...) are listed in automations/engine/specs.py.
-- Library functions the hot paths call, as locals (a global is a table lookup per use).
local rcall, sformat, tconcat, ssub = redis.call, string.format, table.concat, string.sub
local tonumber, ipairs, pairs, type, unpack = tonumber, ipairs, pairs, type, unpack
local H = cjson.decode(ARGV[1])
local NOW = H.now
local ISO = H.iso
local SEQ = 0
local FIRED = 0
local ASOF = NOW  -- the events clock "as of" time; apply.lua sets it per event

-- Memoized for the call: the buckets an event opens share their start, end and deadline.
local FMT = {}
local function fmt(n)
  local s = FMT[n]
  if not s then
    s = sformat('%d', n)
    FMT[n] = s
  end
  return s
end

-- A fresh UUID per call: the batch's uuid7 base (IDB) plus a counter in the last 8 hex digits.
-- newid() gives those digits: the firing JSON takes the two as pieces (see firing_json).
local IDB = H.idb
local function newid()
  SEQ = SEQ + 1
  return sformat('%08x', SEQ)
end

-- Bucket: s, e (window [s, e)), c (count), l/i (last event JSON and id, proactive only),
-- lb (triggering labels JSON); in the table only: t (trigger id, so the timer can find the
-- spec), u (key of the unresolved counter of a top-level proactive trigger, "" otherwise).
-- Redis keeps the fields of the hash; t and u are read off the bucket's key, which holds
-- both (a bucket is ~7% smaller without its copies: 861 bytes against 927).
--
-- Buckets go through a write-back cache for the length of one script call: each is read from
-- Redis once and written once (flush, at the end of the script), however many events of the
-- batch hit it. The script is atomic, so nobody can observe the deferred writes.
local COMPOSITES = {}  -- composite hash key -> its state (write-back, as buckets)
local COMPOSITE_ORDER = {}
local CACHE = {}    -- key -> bucket table, or false (absent or deleted)
local STORED = {}   -- key -> true when Redis held the key when this script first read it
local TOUCHED = {}  -- changed keys, in order of first change
local TOUCHED_SET = {}

local function touch(key)
  if not TOUCHED_SET[key] then
    TOUCHED_SET[key] = true
    TOUCHED[#TOUCHED + 1] = key
  end
end

-- Every field (the timer's path). The key is "<bp><automation>:<trigger>:<key part>": `t` is
-- its trigger id, `rest` what follows bp (the timer makes `u` of it once it knows the spec,
-- unresolved_key).
local function read_bucket(key)
  local cached = CACHE[key]
  if cached ~= nil then return cached or nil end
  local v = rcall('HMGET', key, 's', 'e', 'c', 'l', 'i', 'lb')
  if not v[1] then
    CACHE[key] = false
    return nil
  end
  local e = tonumber(v[2])
  local rest = ssub(key, #H.bp + 1)
  local b = {key = key, s = tonumber(v[1]), e = e, e0 = e, c = tonumber(v[3]),
             l = v[4] or nil, i = v[5] or nil, lb = v[6] or '{}',
             t = string.match(rest, '^[^:]*:([^:]*):'), rest = rest, u = '', lknown = true}
  STORED[key] = true
  CACHE[key] = b
  return b
end

-- The key of the Resolved counter of a bucket read by read_bucket (keys.py unresolved): a
-- top-level proactive trigger's only, as the engine's op templates name it.
local function unresolved_key(sp, b)
  if sp.p == 1 and (not sp.ch or #sp.ch == 0) then return H.up .. b.rest end
  return ''
end

-- The hot path reads only the window and count; labels and the unresolved key come from the
-- caller, the last event is fetched only when a firing needs it (last_of).
local function read_window(key, lb, u)
  local cached = CACHE[key]
  if cached ~= nil then return cached or nil end
  local v = rcall('HMGET', key, 's', 'e', 'c')
  if not v[1] then
    CACHE[key] = false
    return nil
  end
  local e = tonumber(v[2])
  -- sp and dirty are set by save: listed here, the table is built at its final size
  local b = {key = key, s = tonumber(v[1]), e = e, e0 = e, c = tonumber(v[3]), lb = lb, u = u,
             lknown = false, sp = false, dirty = false}
  STORED[key] = true
  CACHE[key] = b
  return b
end

-- The last event of a stored bucket (unchanged in Redis until the flush).
local function last_of(b)
  if not b.lknown then
    local v = rcall('HMGET', b.key, 'l', 'i')
    b.l = v[1] or nil
    b.i = v[2] or nil
    b.lknown = true
  end
  return b.l, b.i
end

-- A new window for `key` (replacing whatever was there).
local function new_bucket(sp, key, lb, u, s, e, c, ev)
  local b = {key = key, s = s, e = e, c = c, lb = lb, u = u, t = sp.t, fresh = true,
             lknown = true}
  if ev then b.l = ev.raw; b.i = ev.id; b.ldirty = true end
  return b
end

local function drop(b)
  CACHE[b.key] = false
  touch(b.key)
end

-- A proactive bucket that met its threshold with after or for_each can never fire: it is
-- deleted at once instead (reference point 4).
local function save(sp, b)
  if sp.p == 1 and b.c >= sp.th and (sp.af == 1 or sp.fe == 1) then
    drop(b)
    return
  end
  b.sp = sp
  b.dirty = true
  CACHE[b.key] = b
  touch(b.key)
end

-- Writes what changed: per bucket one HSET (after a DEL when a stored bucket was replaced),
-- and its deadline, only when it moved, into `due` (score, key pairs: flush adds them).
local function write(b, due)
  local sp, key = b.sp, b.key
  local s, e, c = fmt(b.s), fmt(b.e), fmt(b.c)
  local last = b.l and (b.fresh or b.ldirty)
  if b.fresh then
    if STORED[key] then rcall('DEL', key) end
    if last then
      rcall('HSET', key, 's', s, 'e', e, 'c', c, 'lb', b.lb, 'l', b.l, 'i', b.i)
    else
      rcall('HSET', key, 's', s, 'e', e, 'c', c, 'lb', b.lb)
    end
  elseif last then
    rcall('HSET', key, 's', s, 'e', e, 'c', c, 'l', b.l, 'i', b.i)
  else
    rcall('HSET', key, 's', s, 'e', e, 'c', c)
  end
  if b.fresh or b.e ~= b.e0 then
    -- Proactive buckets are due at their end; reactive ones are swept a while after it.
    local at = b.e
    if sp.p == 0 then at = b.e + H.sweep end
    local n = #due
    due[n + 1] = fmt(at)
    due[n + 2] = key
  end
end

-- `cmd` (on `key` unless nil) with every item of `items` as arguments, in chunks that unpack
-- can take (even-sized: ZADD's score, member pairs stay whole).
local function batched(cmd, key, items)
  local n = #items
  for i = 1, n, 1000 do
    local j = math.min(i + 999, n)
    if key then
      rcall(cmd, key, unpack(items, i, j))
    else
      rcall(cmd, unpack(items, i, j))
    end
  end
end

-- A bucket as the engine sees it: a Reactive one past its sweep time is already gone.
local function live_bucket(sp, key, lb, u)
  local b = read_window(key, lb, u)
  if b and sp.p == 0 and b.e + H.sweep <= ASOF then
    drop(b)
    return nil
  end
  return b
end

-- Opens the global window of Proactive triggers without for_each and without after if it is
-- missing (reference point 4: at the first event or timer tick after the trigger is loaded).
local function ensure_globals()
  local gl = rcall('HGETALL', H.gl)
  for j = 2, #gl, 2 do
    local sp = cjson.decode(gl[j])
    local cached = CACHE[sp.gk]
    local present = cached
    if cached == nil then present = rcall('EXISTS', sp.gk) == 1 end
    if not present then
      save(sp, new_bucket(sp, sp.gk, '{}', sp.gu, ASOF, ASOF + sp.w, 0, nil))
    end
  end
end

-- Firing JSON (triggers/firing.py shape) in the compact outbox form (no `triggering_event`:
-- the entry's `event` field holds it once for all the entry's firings), appended as pieces to
-- P after its n-th: returns the new count. Lua hashes every byte of every string it makes, so
-- JSON is built as pieces and joined once, by the outbox entry or a child's `fj`. `fid`, `aeid`:
-- newid() digits (aeid nil: null); `tf` the triggering firings: '[]', or the child items
-- (tf_json; `evid`: the entry's event id, whose children take the short form); `open`: without
-- the closing brace (child_json appends the event).
local firing_json  -- defined below: the children's JSON it lists (tf_json) calls it back

local function firing_tail(P, n, aeid, open)
  if aeid then
    P[n + 1] = ',"automation_triggered_event_id":"'; P[n + 2] = IDB; P[n + 3] = aeid
    P[n + 4] = '"'
    n = n + 4
  else
    n = n + 1
    P[n] = ',"automation_triggered_event_id":null'
  end
  if open then return n end
  P[n + 1] = '}'
  return n + 1
end

-- A child firing: `fj` is its JSON without `triggering_event` (a child fired in this call
-- keeps the parts of it instead, `fid`, `a`, `id`, `lb`, `tf`, until fj_of makes it),
-- `eid`/`raw` that event's id and JSON (nil: none). `child_json` appends the JSON with the
-- event to the pieces P; the parent's firing in the outbox may list a child in the short form
-- (`short_json`) when the child's event is the entry's event (triggers/firing.py fills it
-- in), so the ~1 KB event is not copied into every child.
local function fj_of(it)
  if not it.fj then
    local P = {}
    local n = firing_json(P, 0, it.fid, it.a, it.id, it.lb, it.tf, nil, 'Triggered')
    it.fj = tconcat(P, '', 1, n)
  end
  return it.fj
end

local function short_json(P, n, it)
  if it.fj then
    P[n + 1] = it.fj
    return n + 1
  end
  return firing_json(P, n, it.fid, it.a, it.id, it.lb, it.tf, nil, 'Triggered')
end

local function child_json(P, n, it)
  if it.fj then
    n = n + 1
    P[n] = ssub(it.fj, 1, -2)
  else
    n = firing_json(P, n, it.fid, it.a, it.id, it.lb, it.tf, nil, 'Triggered', true)
  end
  P[n + 1] = ',"triggering_event":'; P[n + 2] = it.raw or 'null'; P[n + 3] = '}'
  return n + 3
end

-- The triggering firings list of a composite firing: its child items, in declared order.
local function tf_json(P, n, items, evid)
  n = n + 1
  P[n] = '['
  for k = 1, #items do
    local it = items[k]
    if k > 1 then
      n = n + 1
      P[n] = ','
    end
    if evid and it.eid == evid then
      n = short_json(P, n, it)
    else
      n = child_json(P, n, it)
    end
  end
  P[n + 1] = ']'
  return n + 1
end

function firing_json(P, n, fid, a, t, lb, tf, aeid, state, open, evid)
  P[n + 1] = '{"id":"'; P[n + 2] = IDB; P[n + 3] = fid; P[n + 4] = '","automation_id":"'
  P[n + 5] = a; P[n + 6] = '","trigger_id":"'; P[n + 7] = t; P[n + 8] = '","trigger_states":["'
  P[n + 9] = state; P[n + 10] = '"],"triggered":"'; P[n + 11] = ISO
  P[n + 12] = '","triggering_labels":'; P[n + 13] = lb; P[n + 14] = ',"triggering_firings":'
  if tf == '[]' then
    P[n + 15] = tf
    n = n + 15
  else
    n = tf_json(P, n + 14, tf, evid)
  end
  return firing_tail(P, n, aeid, open)
end

-- The outbox entry being built: consecutive firings with the same triggering event share one
-- firings-stream entry (fields `firings`, the JSON list, and `event`/`event_id` when there is
-- an event), so the ~1 KB event is written once however many automations it fires. OUT holds
-- the pieces of the list (its first OUT_N count; the table is reused across entries).
local OUT = {}
local OUT_N = 0
local OUT_ID = nil
local OUT_RAW = nil

local function flush_outbox()
  if OUT_N == 0 then return end
  OUT[OUT_N + 1] = ']'
  local firings = tconcat(OUT, '', 1, OUT_N + 1)
  OUT_N = 0
  -- no MAXLEN here: the consumers trim the stream, never past a pending entry
  if OUT_RAW then
    rcall('XADD', H.fs, '*', 'firings', firings, 'event', OUT_RAW, 'event_id', OUT_ID)
  else
    rcall('XADD', H.fs, '*', 'firings', firings)
  end
end

-- Firings that follow go to the entry of this triggering event (a new one unless the
-- current entry is that event's).
local function out_entry(evid, evraw)
  local group = evid or ''
  if group ~= OUT_ID or OUT_N == 0 then
    flush_outbox()
    OUT_ID = group
    OUT_RAW = evraw
  end
end

-- Opens the next firing of the entry in hand: its list's bracket or a comma.
local function out_next()
  if OUT_N == 0 then OUT[1] = '[' else OUT[OUT_N + 1] = ',' end
  OUT_N = OUT_N + 1
end

-- Firings JSON already made (comma-joined) joins the entry in hand.
local function out_add(firings)
  out_next()
  OUT_N = OUT_N + 1
  OUT[OUT_N] = firings
end

-- The outbox: the firing goes to the firings stream; its prefect.automation.triggered/resolved
-- event (reference 3.13) and `last_fired` (for `ls`) are written from that entry by the
-- engines' announcer (automations/engine/announcer.py), with the event id chosen here. A Triggered
-- top-level proactive firing arms its key's Resolved counter (DESIGN.md section 5).
local function publish(sp, lb, evraw, evid, tf, t, state, u)
  state = state or 'Triggered'
  if state ~= 'Resolved' and u and u ~= '' then
    rcall('SET', u, sp.th, 'EX', H.uttl)
  end
  out_entry(evid, evraw)
  local aeid = newid()
  out_next()
  OUT_N = firing_json(OUT, OUT_N, newid(), sp.a, t, lb, tf, aeid, state, false, evid)
  FIRED = FIRED + 1
end

local function merge_labels(items)
  local merged = {}
  local any = false
  for _, it in ipairs(items) do
    if it.lb ~= '{}' then
      for k, v in pairs(cjson.decode(it.lb)) do merged[k] = v; any = true end
    end
  end
  if not any then return '{}' end
  return cjson.encode(merged)
end

-- One composite level (reference 3.11, point 8): keep the latest firing per child in a hash,
-- drop the ones older than within (wall clock), check readiness and clear, all inside this
-- script. Stored value: "<fired us> <#labels> <#event id> <#json> <labels><event id><json>
-- <event JSON>" (a child item above). Returns the children in declared order when the parent
-- fires, else nil. The hash is read once per script call and written back by flush()
-- (children that fire together, the usual case of `all` on one event, never touch Redis
-- beyond that one read).
local function composite_state(c)
  local st = COMPOSITES[c.k]
  if st then return st end
  st = {c = c, items = {}, loaded = {}, stored = false, dirty = false}
  local all = rcall('HGETALL', c.k)
  for j = 1, #all, 2 do
    local v = all[j + 1]
    local t, nl, ni, nj, at = string.match(v, '^(%d+) (%d+) (%d+) (%d+) ()')
    nl, ni, nj = tonumber(nl), tonumber(ni), tonumber(nj)
    local it = {id = all[j], t = tonumber(t), lb = ssub(v, at, at + nl - 1)}
    at = at + nl
    if ni > 0 then it.eid = ssub(v, at, at + ni - 1) end
    at = at + ni
    it.fj = ssub(v, at, at + nj - 1)
    local raw = ssub(v, at + nj)
    if raw ~= '' then it.raw = raw end
    st.items[all[j]] = it
    st.loaded[all[j]] = true
    st.stored = true
  end
  COMPOSITES[c.k] = st
  COMPOSITE_ORDER[#COMPOSITE_ORDER + 1] = c.k
  return st
end

local function composite_step(c, child)
  local st = composite_state(c)
  local kept = st.items
  if c.w >= 0 then
    for id, it in pairs(kept) do
      if it.t < NOW - c.w then kept[id] = nil end
    end
  end
  child.t = NOW
  child.new = true
  kept[child.id] = child
  st.dirty = true
  local items = {}
  for _, id in ipairs(c.o) do
    if kept[id] then items[#items + 1] = kept[id] end
  end
  local ready
  if c.s == 1 then
    ready = #items == #c.o
    for k = 2, #items do
      if items[k - 1].t > items[k].t then ready = false end
    end
  else
    ready = #items >= c.n
  end
  if not ready then return nil end
  st.items = {}
  return items
end

local function flush_composite(st)
  local hk = st.c.k
  if next(st.items) == nil then
    if st.stored then rcall('DEL', hk) end
    return
  end
  local gone = {}
  for id in pairs(st.loaded) do
    if not st.items[id] then gone[#gone + 1] = id end
  end
  if #gone > 0 then rcall('HDEL', hk, unpack(gone)) end
  local args = {'HSET', hk}
  for _, id in ipairs(st.c.o) do
    local it = st.items[id]
    if it and it.new then
      args[#args + 1] = id
      local eid = it.eid or ''
      local fj = fj_of(it)
      args[#args + 1] = fmt(it.t) .. ' ' .. #it.lb .. ' ' .. #eid .. ' ' .. #fj .. ' '
        .. it.lb .. eid .. fj .. (it.raw or '')
    end
  end
  if #args > 2 then rcall(unpack(args)) end
  if st.c.w >= 0 then rcall('PEXPIRE', hk, math.floor(st.c.w / 1000) + 60000) end
end

-- Writes the outbox entry in hand and every bucket and composite hash the call changed. The
-- deadlines and the deletions of dropped buckets go in batched commands: each key is touched
-- once here, so their order does not matter.
local function flush()
  flush_outbox()
  for _, hk in ipairs(COMPOSITE_ORDER) do
    local st = COMPOSITES[hk]
    if st.dirty then flush_composite(st) end
  end
  local due, gone = {}, {}
  for _, key in ipairs(TOUCHED) do
    local b = CACHE[key]
    if b == false then
      if STORED[key] then gone[#gone + 1] = key end
    elseif b.dirty then
      write(b, due)
    end
  end
  batched('ZADD', H.dl, due)
  batched('DEL', nil, gone)
  batched('ZREM', H.dl, gone)
end

-- FIRE (reference 3.4): straight to the outbox for a top-level trigger, else up the chain of
-- composite parents (innermost first); only the root's firing reaches the outbox.
local function fire(sp, b, evraw, evid)
  local chain = sp.ch  -- none in an apply call's spec without parents
  if not chain or #chain == 0 then
    return publish(sp, b.lb, evraw, evid, '[]', sp.t, 'Triggered', b.u)
  end
  local child = {id = sp.t, a = sp.a, lb = b.lb, fid = newid(), tf = '[]', eid = evid,
                 raw = evraw, t = NOW, new = true}
  for i = 1, #chain do
    local c = chain[i]
    local items
    if c.n <= 1 then
      items = {child}
    else
      items = composite_step(c, child)
      if not items then return end
    end
    local labels = merge_labels(items)
    if i == #chain then  -- the root: the children whose event is the entry's take the short form
      return publish(sp, labels, evraw, evid, items, c.t)
    end
    child = {id = c.t, a = sp.a, lb = labels, fid = newid(), tf = items, eid = evid,
             raw = evraw, t = NOW, new = true}
  end
end

-- Expect events of an `after` trigger that arrived before any window of their key are held
-- (scored by occurred); a window that opens counts and forgets the ones inside it, and the
-- latest becomes its last event (reference point 6). Those older than occurred + W + 15 min
-- <= as_of are dropped.
local function take_held(hk, b, sp)
  if not hk or hk == '' or rcall('EXISTS', hk) == 0 then return 0 end
  rcall('ZREMRANGEBYSCORE', hk, '-inf', fmt(ASOF - sp.w - H.held_keep))
  local hi = '(' .. fmt(b.e)
  if sp.p == 0 and sp.w == 0 then hi = '+inf' end
  local got = rcall('ZRANGEBYSCORE', hk, fmt(b.s), hi)
  if #got == 0 then return 0 end
  rcall('ZREMRANGEBYSCORE', hk, fmt(b.s), hi)
  b.c = b.c + #got
  local last = got[#got]
  local cut = string.find(last, ' ', 1, true)
  b.i = ssub(last, 1, cut - 1)
  b.l = ssub(last, cut + 1)
  b.ldirty = true
  b.lknown = true
  return #got
end

-- EVALUATE (reference 3.4). ev = {id, raw, t, A (after event), E (expected), hk (held key)}
-- or nil. Returns the surviving bucket (saved) or nil (deleted).
local function evaluate(sp, b, now, ev)
  local count = 0
  if ev then count = 1 end
  if now < b.s then return b end  -- late event or cooldown: ignored, nothing written
  local reactive = sp.p == 0
  if count == 1 and ((reactive and sp.w == 0) or (b.s <= now and now < b.e)) then
    b.c = b.c + 1
    count = 0
    if not reactive then
      b.l = ev.raw; b.i = ev.id; b.ldirty = true; b.lknown = true
    end
  end
  local meets
  if reactive then meets = b.c >= sp.th else meets = b.c < sp.th end
  local ready = reactive or b.e <= now
  local fired = false
  if ready and meets then
    if ev then
      fire(sp, b, ev.raw, ev.id)
    else
      local l, i = last_of(b)
      fire(sp, b, l, i)
    end
    drop(b)
    fired = true
  elseif now < b.e then
    if ev and not reactive and not meets and ev.A and ev.E then  -- sliding heartbeat window
      local nb = new_bucket(sp, b.key, b.lb, b.u, ev.t, ev.t + sp.w, 0, ev)
      take_held(ev.hk, nb, sp)
      save(sp, nb)
      return nb
    end
    save(sp, b)
    return b
  end
  -- the window is over (fired or expired)
  if sp.af == 1 then
    if not fired then drop(b) end
    return nil
  end
  if sp.w == 0 then
    if fired then return nil end
    save(sp, b)
    return b
  end
  local start = math.max(b.e, now)
  if reactive and count > 0 then  -- the event lies beyond the old window: it opens a new one
    local fresh = new_bucket(sp, b.key, b.lb, b.u, start, start + sp.w, 0, nil)
    return evaluate(sp, fresh, now, ev)
  end
  local nb = new_bucket(sp, b.key, b.lb, b.u, start, start + sp.w, count, nil)
  if count > 0 then nb.l = ev.raw; nb.i = ev.id; nb.ldirty = true end
  save(sp, nb)
  return nb
end
