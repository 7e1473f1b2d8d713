-- ARGV[8..9]: id, serial of a wait that went away: the peer's liveness timer starts.
local id = ARGV[8]
local w = call('HGET', pk(id), 'wait')
if w then
  local ws, serial = parse_wait(w)
  if ws == S and serial == tonumber(ARGV[9]) then
    unpark(id, S)
    call('ZADD', DEADLINES, NOW + TIMEOUT, id)
  end
end
return reply()
