-- arg 1..3: id, serial ('' if none here), gen.  What this session holds in
-- flight for the peer was not read: back to the head.  If the peer's waits
-- still come here, deliveries from now on carry the new gen, so that those
-- still on their way (moved back just now) are ignored.  Answers how many
-- items went back, and 1 if the peer's waits still come here (registration
-- serial), 0 if they go elsewhere now (news of that may still be on its way).
local id = arg(1)
local p = pk(id)
if call('EXISTS', p) == 0 then return reply(0, 0) end
local moved = 0
if call('HGET', p, 'holder') == S then moved = requeue_all(id) end
local w = call('HGET', p, 'wait')
local here = 0
if w and arg(2) ~= '' then
  local ws, serial, window = parse_wait(w)
  if ws == S and serial == tonumber(arg(2)) then
    call('HSET', p, 'wait', S .. '|' .. serial .. '|' .. window .. '|' .. arg(3))
    here = 1
  end
end
if moved > 0 then wake(id) end
return reply(moved, here)
