-- Shared by every script (prepended to each).  See pcsignal/channel/redis.py
-- for the data model.  ARGV: prefix, now, session, peer_timeout, max_queue,
-- max_queued_bytes, max_peers, then the script's own arguments.
local call = redis.call
local P, NOW, S = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local TIMEOUT, MAXQ = tonumber(ARGV[4]), tonumber(ARGV[5])
local MAXB, MAXP = tonumber(ARGV[6]), tonumber(ARGV[7])
local ORDER, DEADLINES, SESSIONS = P .. 'order', P .. 'deadlines', P .. 'sessions'
local ITEMS, BYTES, SEQ = P .. 'items', P .. 'bytes', P .. 'seq'

local function pk(id) return P .. 'p:' .. id end   -- hash: the member
local function qk(id) return P .. 'q:' .. id end   -- list: not yet handed out
local function fk(id) return P .. 'f:' .. id end   -- list: in flight
local function uk(id) return P .. 'u:' .. id end   -- hash: untold presence by subject

-- Events for instances, one PUBLISH per instance channel at the end.
local events, event_order = {}, {}
local removed = {}  -- id, name, why: for the caller to log

local function instance_channel(session)
  return P .. 'i:' .. string.match(session, '^(.*)%.')
end

local function emit(session, event)
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

local function parse_wait(w)
  local ws, serial, window = string.match(w, '^(.*)|(%d+)|(%d+)$')
  return ws, tonumber(serial), tonumber(window)
end

local function body_bytes(e)
  -- 'm<from> <bytes> ...', possibly numbered 'n#m...'
  local b = string.match(e, '^%d*#?m%d+ (%d+) ')
  return b and tonumber(b) or 0
end

local function clear_holder(id)
  local p = pk(id)
  local h = call('HGET', p, 'holder')
  if h then
    call('SREM', P .. 'held:' .. h, id)
    call('HDEL', p, 'holder')
  end
end

-- Items in flight numbered from n on go back to the head of the mailbox,
-- in order, keeping their numbers.
local function requeue_from(id, n)
  local f, q = fk(id), qk(id)
  local moved = 0
  while true do
    local e = call('LINDEX', f, -1)
    if not e or tonumber(string.match(e, '^(%d+)#')) < n then break end
    call('RPOP', f)
    call('LPUSH', q, e)
    moved = moved + 1
  end
  if call('LLEN', f) == 0 then clear_holder(id) end
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

-- Hand the oldest item out to session s: in flight until settled.
local function take(id, s, window)
  local p, f = pk(id), fk(id)
  local inflight = call('LLEN', f)
  if inflight > 0 then
    local h = call('HGET', p, 'holder')
    if h ~= s then
      if h and alive(h) then return nil end  -- settled by its holder
      inflight = inflight - requeue_from(id, 0)
    end
  end
  if inflight >= window then return nil end
  local q = qk(id)
  while true do
    local e = call('LPOP', q)
    if not e then return nil end
    local c = string.byte(e, 1)
    local out = nil
    if c == 112 then  -- 'p': live only while it is the untold entry for its subject
      local subject = string.match(e, '^p(%d+) ')
      if call('HGET', uk(id), subject) == e then
        call('HDEL', uk(id), subject)
        out = call('HINCRBY', p, 'n', 1) .. '#' .. e
      else
        call('HINCRBY', p, 'void', -1)
      end
    elseif c == 109 then  -- 'm'
      out = call('HINCRBY', p, 'n', 1) .. '#' .. e
    else  -- requeued: keeps its number
      out = e
    end
    if out then
      call('RPUSH', f, out)
      if inflight == 0 then
        call('HSET', p, 'holder', s)
        call('SADD', P .. 'held:' .. s, id)
      end
      return out
    end
  end
end

local function unpark(id, ws)
  call('HDEL', pk(id), 'wait')
  call('SREM', P .. 'parked:' .. ws, id)
end

-- Give the parked wait, wherever it is, the next item if it may have one.
local function wake(id)
  local w = call('HGET', pk(id), 'wait')
  if not w then return end
  local ws, serial, window = parse_wait(w)
  if not alive(ws) then
    retire(ws)
    return
  end
  local e = take(id, ws, window)
  if e then
    unpark(id, ws)
    call('ZADD', DEADLINES, NOW + TIMEOUT, id)
    emit(ws, {'d', ws, tonumber(id), serial, e})
  end
end

-- A session that is gone: its parked waits are no more (the peers have
-- peer_timeout to come back), what it had in flight goes back to the head.
retire = function(session)
  local parked = P .. 'parked:' .. session
  for _, id in ipairs(call('SMEMBERS', parked)) do
    local w = call('HGET', pk(id), 'wait')
    if w and parse_wait(w) == session then
      call('HDEL', pk(id), 'wait')
      call('ZADD', DEADLINES, NOW + TIMEOUT, id)
    end
  end
  call('DEL', parked)
  call('ZREM', SESSIONS, session)
  known[session] = false
  local held = P .. 'held:' .. session
  for _, id in ipairs(call('SMEMBERS', held)) do
    if call('HGET', pk(id), 'holder') == session then
      requeue_from(id, 0)
      wake(id)
    end
  end
  call('DEL', held)
end

-- Tell member m about subject; false if its mailbox is full.
local function notify(m, subject, entry, joining)
  local p, u = pk(m), uk(m)
  local untold = call('HGET', u, subject)
  if untold then
    -- This change replaces the untold one; joined and left untold is nothing.
    call('HDEL', u, subject)
    call('HINCRBY', p, 'count', -1)
    call('INCRBY', ITEMS, -1)
    call('HINCRBY', p, 'void', 1)
    compact(m)
    if not joining and string.sub(untold, -3) == ',1\n' then return true end
  end
  if tonumber(call('HGET', p, 'count')) >= MAXQ then return false end
  local e = 'p' .. subject .. ' ' .. call('INCR', SEQ) .. ' ' .. entry
  call('RPUSH', qk(m), e)
  call('HSET', u, subject, e)
  call('HINCRBY', p, 'count', 1)
  call('INCRBY', ITEMS, 1)
  wake(m)
  return true
end

local function notify_all(subject, entry, joining, full)
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
    local h = call('HMGET', p, 'name', 'count', 'bytes', 'wait', 'holder')
    if h[1] then
      call('INCRBY', ITEMS, 0 - tonumber(h[2]))
      call('INCRBY', BYTES, 0 - tonumber(h[3]))
      if h[4] then
        local ws, serial = parse_wait(h[4])
        call('SREM', P .. 'parked:' .. ws, id)
        emit(ws, {'x', ws, tonumber(id), serial})
      end
      if h[5] then call('SREM', P .. 'held:' .. h[5], id) end
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
          if ev[1] == 'd' then requeue_from(tostring(ev[3]), 0) end
        end
      end
    end
  end
end

-- Every reply: the counters (peers, items held, message bytes held), the
-- members removed (id, name, why, ...), then the script's own results.
local function reply(...)
  flush()
  local out = {call('ZCARD', ORDER), tonumber(call('GET', ITEMS) or 0),
               tonumber(call('GET', BYTES) or 0), removed}
  for _, v in ipairs({...}) do table.insert(out, v) end
  return out
end
