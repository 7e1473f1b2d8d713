-- ARGV[8..10]: id, the wait's serial on this instance, window.
local id, serial, window = ARGV[8], ARGV[9], tonumber(ARGV[10])
local p = pk(id)
if call('EXISTS', p) == 0 then return reply('unknown') end
local w = call('HGET', p, 'wait')
if w then
  local ws, wserial = parse_wait(w)
  if ws ~= S then emit(ws, {'r', ws, tonumber(id), wserial}) end
  unpark(id, ws)
end
local e = take(id, S, window)
if e then
  call('ZADD', DEADLINES, NOW + TIMEOUT, id)
  return reply('item', e)
end
call('HSET', p, 'wait', S .. '|' .. serial .. '|' .. window)
call('SADD', P .. 'parked:' .. S, id)
call('ZREM', DEADLINES, id)
return reply('parked')
