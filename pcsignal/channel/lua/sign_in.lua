-- arg 1..3: name ('' for the default), token, candidate id ('' for the next of INCR).
local name, token, candidate = arg(1), arg(2), arg(3)
if call('ZCARD', ORDER) >= MAXP then return reply('full') end
local id
if candidate == '' then
  repeat id = tostring(call('INCR', P .. 'ids')) until call('EXISTS', pk(id)) == 0
else
  id = candidate
  if call('EXISTS', pk(id)) == 1 then return reply('taken') end
end
if name == '' then name = 'peer_' .. id end
local entry = name .. ',' .. id .. ',1\n'
local body = {entry}
for _, m in ipairs(call('ZRANGE', ORDER, 0, -1)) do
  table.insert(body, call('HGET', pk(m), 'name') .. ',' .. m .. ',1\n')
end
local full = {}
notify_all(id, entry, true, full)
call('HSET', pk(id), 'name', name, 'token', token, 'n', 0, 'void', 0)
call('ZADD', ORDER, call('INCR', SEQ), id)
call('ZADD', DEADLINES, NOW + TIMEOUT, id)
remove(full)
return reply('ok', tonumber(id), table.concat(body))
