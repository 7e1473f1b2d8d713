-- ARGV[8..]: session lifetime, count of old sessions, the old sessions,
-- then (id, serial, window) for every wait parked here.  A new session
-- after a lost link: the old ones are retired, the waits parked again
-- (or answered).  Answers per wait: 'unknown', 'replaced', 'parked' or an item.
local ttl, n_old = tonumber(ARGV[8]), tonumber(ARGV[9])
local old = {}
for k = 1, n_old do old[ARGV[9 + k]] = true end
local i = 10 + n_old
local results = {}
for k = 10, 9 + n_old do
  -- Parked waits re-registered below; the rest of the old session goes.
  retire(ARGV[k])
end
call('ZADD', SESSIONS, NOW + ttl, S)
while i <= #ARGV do
  local id, serial, window = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local p = pk(id)
  local w = call('HGET', p, 'wait')
  local ws = w and parse_wait(w)
  if call('EXISTS', p) == 0 then
    table.insert(results, 'unknown')
  elseif ws and not old[ws] and alive(ws) then
    table.insert(results, 'replaced')
  else
    if ws then unpark(id, ws) end
    local e = take(id, S, window)
    if e then
      call('ZADD', DEADLINES, NOW + TIMEOUT, id)
      table.insert(results, e)
    else
      call('HSET', p, 'wait', S .. '|' .. serial .. '|' .. window)
      call('SADD', P .. 'parked:' .. S, id)
      call('ZREM', DEADLINES, id)
      table.insert(results, 'parked')
    end
  end
end
return reply(results)
