-- arg 1..: session lifetime, count of old sessions, the old sessions, then
-- (id, serial, window, gen) for every wait parked here.  A new session
-- after a lost link: the acks held through the outage are applied (by the
-- prologue), the old sessions retired, the waits registered again.
-- Answers per wait: 'unknown', 'replaced' or 'ok' (its items come as events).
local ttl, n_old = tonumber(arg(1)), tonumber(arg(2))
local old = {}
for k = 1, n_old do
  old[arg(2 + k)] = true
  retire(arg(2 + k))
end
call('ZADD', SESSIONS, NOW + ttl, S)
local results = {}
local i = 3 + n_old
while arg(i) do
  local id, serial, window, gen = arg(i), arg(i + 1), arg(i + 2), arg(i + 3)
  i = i + 4
  local p = pk(id)
  local w = call('HGET', p, 'wait')
  local ws = w and parse_wait(w)
  if call('EXISTS', p) == 0 then
    table.insert(results, 'unknown')
  elseif ws and ws ~= S and not old[ws] and alive(ws) then
    table.insert(results, 'replaced')
  else
    register(id, serial, window, gen, 0, true)
    wake(id)
    table.insert(results, 'ok')
  end
end
return reply(results)
