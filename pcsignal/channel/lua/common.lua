-- Shared by every script (prepended to each).  See pcsignal/channel/redis.py
-- for the data model.  ARGV: prefix, now, session, peer_timeout, max_queue,
-- max_queued_bytes, max_peers, the acks this instance holds ('ID N ...'), its
-- marks ('ID SERIAL 1|0 ...': a wait parked, or no longer), both applied
-- first, then the script's own arguments: arg(1), arg(2), ...
local call = redis.call
local P, NOW, S = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local TIMEOUT, MAXQ = tonumber(ARGV[4]), tonumber(ARGV[5])
local MAXB, MAXP = tonumber(ARGV[6]), tonumber(ARGV[7])
local ORDER, DEADLINES, SESSIONS = P .. 'order', P .. 'deadlines', P .. 'sessions'
local ITEMS, BYTES, SEQ = P .. 'items', P .. 'bytes', P .. 'seq'

local function arg(i) return ARGV[9 + i] end
local function pk(id) return P .. 'p:' .. id end   -- hash: the member
local function qk(id) return P .. 'q:' .. id end   -- list: not yet handed out
local function fk(id) return P .. 'f:' .. id end   -- list: in flight
local function uk(id) return P .. 'u:' .. id end   -- hash: untold presence by subject

-- Events for instances: this session's come back in the reply, the others'
-- go out with one PUBLISH per instance channel at the end (JSON).  Each is
-- {kind, session, peer id, ...}; the kinds (redis.py has the same numbers):
local DELIVERY, MOVED, REMOVED, NUDGE = 1, 2, 3, 4
local events, event_order, own = {}, {}, {}
local removed = {}  -- id, name, why: for the caller to log
-- The changes of ITEMS and BYTES, applied once in reply(): a relayed
-- message adds its bytes and its ack takes the last one's away.
local items_delta, bytes_delta, bytes_base = 0, 0, nil

local function bytes_held()
  if not bytes_base then bytes_base = tonumber(call('GET', BYTES) or 0) end
  return bytes_base + bytes_delta
end

local function instance_channel(session)
  return P .. 'i:' .. string.match(session, '^(.*)%.')
end

local function emit(session, event)
  if session == S then
    table.insert(own, event)
    return
  end
  local ch = instance_channel(session)
  local list = events[ch]
  if not list then
    list = {}
    events[ch] = list
    table.insert(event_order, ch)
  end
  table.insert(list, event)
end

-- A session is alive while registered and its instance listens.
local known = {}
local function alive(session)
  if session == S then return true end
  local yes = known[session]
  if yes == nil then
    local deadline = call('ZSCORE', SESSIONS, session)
    yes = deadline ~= false and tonumber(deadline) >= NOW
      and call('PUBSUB', 'NUMSUB', instance_channel(session))[2] > 0
    known[session] = yes
  end
  return yes
end

-- A registration: 'SESSION|SERIAL|WINDOW|GEN'.
local function parse_wait(w)
  local ws, serial, window, gen = string.match(w, '^(.*)|(%d+)|(%d+)|(%d+)$')
  return ws, tonumber(serial), tonumber(window), tonumber(gen)
end

local function body_bytes(e)
  -- 'm<from> <bytes> ...', possibly numbered 'n#m...'
  local b = string.match(e, '^%d*#?m%d+ (%d+) ')
  return b and tonumber(b) or 0
end

-- Items held for a member: queued (less the cancelled notifications among
-- them) and in flight.
local function held_count(id)
  return call('LLEN', qk(id)) - tonumber(call('HGET', pk(id), 'void') or 0)
    + call('LLEN', fk(id))
end

-- Whether a member's mailbox has room for one more item, and how many of
-- its items are in flight.  The cancelled notifications are read only
-- when they could make the difference.
local function room(id)
  local queued, inflight = call('LLEN', qk(id)), call('LLEN', fk(id))
  return queued + inflight < MAXQ
    or queued + inflight - tonumber(call('HGET', pk(id), 'void') or 0) < MAXQ, inflight
end

-- Everything in flight goes back to the head of the mailbox, in order,
-- keeping its numbers.  (The holder field stays: it means nothing while
-- nothing is in flight.)
local function requeue_all(id)
  local f, q = fk(id), qk(id)
  local moved = 0
  while true do
    local e = call('RPOP', f)
    if not e then break end
    call('LPUSH', q, e)
    moved = moved + 1
  end
  return moved
end

local function compact(id)
  local p, q, u = pk(id), qk(id), uk(id)
  local void = tonumber(call('HGET', p, 'void') or 0)
  if void <= 64 or void * 2 <= call('LLEN', q) then return end
  local keep = {}
  for _, e in ipairs(call('LRANGE', q, 0, -1)) do
    local subject = string.match(e, '^p(%d+) ')
    if not subject or call('HGET', u, subject) == e then table.insert(keep, e) end
  end
  call('DEL', q)
  for i = 1, #keep, 1000 do
    call('RPUSH', q, unpack(keep, i, math.min(i + 999, #keep)))
  end
  call('HSET', p, 'void', 0)
end

local retire

-- Hand the oldest item out to session s: in flight until settled.  Nil and
-- the session whose items in flight block it, if any do.  A notification
-- goes only to a parked wait (live): until then it can still be coalesced.
-- holder: the session the items in flight were handed to.
local function take(id, s, window, live, holder, inflight)
  local p, f = pk(id), fk(id)
  inflight = inflight or call('LLEN', f)
  if inflight > 0 and holder ~= s then
    if holder and alive(holder) then return nil, holder end  -- settled by its holder first
    inflight = inflight - requeue_all(id)
  end
  if inflight >= window then return nil, s end
  local q = qk(id)
  while true do
    local e = call('LPOP', q)
    if not e then return nil end
    local c = string.byte(e, 1)
    local out = nil
    if c == 112 then  -- 'p': live only while it is the untold entry for its subject
      local subject = string.match(e, '^p(%d+) ')
      if call('HGET', uk(id), subject) ~= e then
        call('HINCRBY', p, 'void', -1)
      elseif not live then
        call('LPUSH', q, e)
        return nil, s
      else
        call('HDEL', uk(id), subject)
        out = call('HINCRBY', p, 'n', 1) .. '#' .. e
      end
    elseif c == 109 then  -- 'm'
      out = call('HINCRBY', p, 'n', 1) .. '#' .. e
    else  -- requeued: keeps its number
      out = e
    end
    if out then
      if live then call('HDEL', p, 'live') end  -- that wait is answered
      call('RPUSH', f, out)
      if inflight == 0 and holder ~= s then
        if holder then call('SREM', P .. 'held:' .. holder, id) end
        call('HSET', p, 'holder', s)
        call('SADD', P .. 'held:' .. s, id)
      end
      return out
    end
  end
end

-- Hand the registered instance every item its window allows.  If items in
-- flight block the way, nudge their holder once: it may sit on their ack
-- (or, for a notification, on word that a wait is parked).
local nudged = {}
local function wake(id, inflight)
  local h = call('HMGET', pk(id), 'wait', 'live', 'holder')
  if not h[1] then return end
  local ws, serial, window, gen = parse_wait(h[1])
  if not alive(ws) then
    retire(ws)
    return
  end
  local live, holder = h[2] == ws .. '|' .. serial, h[3]
  while true do
    local e, blocker = take(id, ws, window, live, holder, inflight)
    if not e then
      if blocker and not nudged[id] and call('LLEN', qk(id)) > 0 then
        nudged[id] = true
        emit(blocker, {NUDGE, blocker, tonumber(id)})
      end
      return
    end
    emit(ws, {DELIVERY, ws, tonumber(id), serial, gen, e})
    if window == 1 then return end  -- full now: no need to look again
    live, holder, inflight = false, ws, nil
  end
end

-- Waits of peer id now go to this session.  The instance they went to
-- hears so ('r'), and whether it holds items of the peer in flight.
local function register(id, serial, window, gen, contest, live)
  local p = pk(id)
  local w = call('HGET', p, 'wait')
  if w then
    local ws, wserial = parse_wait(w)
    if ws ~= S then
      local held = (call('HGET', p, 'holder') == ws and call('LLEN', fk(id)) > 0) and 1 or 0
      emit(ws, {MOVED, ws, tonumber(id), wserial, held, contest})
      call('SREM', P .. 'parked:' .. ws, id)
    end
  end
  call('HSET', p, 'wait', S .. '|' .. serial .. '|' .. window .. '|' .. gen)
  if live then call('HSET', p, 'live', S .. '|' .. serial) else call('HDEL', p, 'live') end
  call('SADD', P .. 'parked:' .. S, id)
  call('ZREM', DEADLINES, id)
end

local function unregister(id, ws)
  call('HDEL', pk(id), 'wait', 'live')
  call('SREM', P .. 'parked:' .. ws, id)
end

-- A session that is gone: its registrations are no more (the peers have
-- peer_timeout to come back), what it had in flight goes back to the head.
retire = function(session)
  local parked = P .. 'parked:' .. session
  for _, id in ipairs(call('SMEMBERS', parked)) do
    local w = call('HGET', pk(id), 'wait')
    if w and parse_wait(w) == session then
      call('HDEL', pk(id), 'wait', 'live')
      call('ZADD', DEADLINES, NOW + TIMEOUT, id)
    end
  end
  call('DEL', parked)
  call('ZREM', SESSIONS, session)
  known[session] = false
  local held = P .. 'held:' .. session
  for _, id in ipairs(call('SMEMBERS', held)) do
    if call('HGET', pk(id), 'holder') == session then
      requeue_all(id)
      wake(id)
    end
  end
  call('DEL', held)
end

-- Items numbered up to n were read: forget them, in flight or requeued.
-- True if that freed any (and the next was looked for).
local function ack(id, n)
  local f = fk(id)
  local inflight = call('LRANGE', f, 0, -1)  -- a window's worth at most
  local freed, bytes = 0, 0
  for _, e in ipairs(inflight) do
    if tonumber(string.match(e, '^(%d+)#')) > n then break end
    freed = freed + 1
    bytes = bytes + body_bytes(e)
  end
  local emptied, e = freed == #inflight, nil
  if emptied then
    if freed > 0 then call('DEL', f) end
    -- Requeued items, at the head of the mailbox, all numbered above those
    -- in flight.
    local q = qk(id)
    while true do
      e = call('LINDEX', q, 0)
      local en = e and tonumber(string.match(e, '^(%d+)#'))
      if not en or en > n then break end
      call('LPOP', q)
      freed = freed + 1
      bytes = bytes + body_bytes(e)
    end
  elseif freed > 0 then
    call('LTRIM', f, freed, -1)
  end
  if freed > 0 then
    items_delta = items_delta - freed
    bytes_delta = bytes_delta - bytes
    -- Nothing in flight and nothing queued (e): nothing to hand out.
    if not emptied then wake(id) elseif e then wake(id, 0) end
    return true
  end
end

-- Tell member m about subject (the entry, unique by its serial); false if
-- its mailbox is full.
local function notify(m, subject, entry, joining)
  local p, u = pk(m), uk(m)
  local untold = call('HGET', u, subject)
  if untold then
    -- This change replaces the untold one; joined and left untold is nothing.
    call('HDEL', u, subject)
    items_delta = items_delta - 1
    call('HINCRBY', p, 'void', 1)
    compact(m)
    if not joining and string.sub(untold, -3) == ',1\n' then return true end
  end
  local fits, inflight = room(m)
  if not fits then return false end
  call('RPUSH', qk(m), entry)
  call('HSET', u, subject, entry)
  items_delta = items_delta + 1
  wake(m, inflight)
  return true
end

local function notify_all(subject, entry, joining, full)
  entry = 'p' .. subject .. ' ' .. call('INCR', SEQ) .. ' ' .. entry
  for _, m in ipairs(call('ZRANGE', ORDER, 0, -1)) do
    if not notify(m, subject, entry, joining) then
      table.insert(full, {m, 'dropped (mailbox full)'})
    end
  end
end

-- Remove members (a stack of {id, why}); notifying the others may drop
-- more, whose mailboxes are full.
local function remove(pending)
  while #pending > 0 do
    local top = table.remove(pending)
    local id, why = top[1], top[2]
    local p = pk(id)
    local h = call('HMGET', p, 'name', 'wait', 'holder')
    if h[1] then
      items_delta = items_delta - held_count(id)
      local bytes = 0
      for _, key in ipairs({qk(id), fk(id)}) do
        for _, e in ipairs(call('LRANGE', key, 0, -1)) do bytes = bytes + body_bytes(e) end
      end
      bytes_delta = bytes_delta - bytes
      if h[2] then
        local ws, serial = parse_wait(h[2])
        call('SREM', P .. 'parked:' .. ws, id)
        emit(ws, {REMOVED, ws, tonumber(id), serial})
      end
      if h[3] then call('SREM', P .. 'held:' .. h[3], id) end
      call('DEL', p, qk(id), fk(id), uk(id))
      call('ZREM', ORDER, id)
      call('ZREM', DEADLINES, id)
      table.insert(removed, id)
      table.insert(removed, h[1])
      table.insert(removed, why)
      notify_all(id, h[1] .. ',' .. id .. ',0\n', false, pending)
    end
  end
end

local function flush()
  -- Publishing to an instance nobody listens on retires its sessions,
  -- which may wake others: until nothing is left to say.
  while #event_order > 0 do
    local order, batch = event_order, events
    events, event_order = {}, {}
    for _, ch in ipairs(order) do
      if call('PUBLISH', ch, cjson.encode(batch[ch])) == 0 then
        for _, ev in ipairs(batch[ch]) do
          if call('ZSCORE', SESSIONS, ev[2]) then retire(ev[2]) end
          if ev[1] == DELIVERY and call('HGET', pk(ev[3]), 'holder') == ev[2] then
            requeue_all(tostring(ev[3]))
          end
        end
      end
    end
  end
end

-- Every reply: the counters (peers, items held, message bytes held), the
-- members removed (id, name, why, ...), this session's events, then the
-- script's own results.
local function reply(...)
  flush()
  local items = items_delta ~= 0 and call('INCRBY', ITEMS, items_delta)
    or tonumber(call('GET', ITEMS) or 0)
  local bytes = bytes_delta ~= 0 and call('INCRBY', BYTES, bytes_delta) or bytes_held()
  local out = {call('ZCARD', ORDER), items, bytes, removed, own}
  for _, v in ipairs({...}) do table.insert(out, v) end
  return out
end

-- The marks first (a wait parked, or no longer), then the acks, each of
-- which may free the way for the next item: one look per peer.
local marked = {}
for id, serial, on in string.gmatch(ARGV[9], '(%d+) (%d+) (%d)') do
  local p = pk(id)
  local w = call('HGET', p, 'wait')
  if w then
    local ws, wserial = parse_wait(w)
    if ws == S and wserial == tonumber(serial) then
      if on == '1' then
        call('HSET', p, 'live', S .. '|' .. serial)
        marked[id] = true
      else
        call('HDEL', p, 'live')
      end
    end
  end
end
for id, n in string.gmatch(ARGV[8], '(%d+) (%d+)') do
  if ack(id, tonumber(n)) then marked[id] = nil end
end
for id in pairs(marked) do wake(id) end
