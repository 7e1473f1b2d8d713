-- arg 1..2: id, serial.  The peer's waits came here, and none for
-- peer_timeout: it is removed, as if it had signed out.  If they go
-- elsewhere by now, what this session holds in flight goes back.
local id, serial = arg(1), tonumber(arg(2))
local p = pk(id)
local w = call('HGET', p, 'wait')
if w then
  local ws, wserial = parse_wait(w)
  if ws == S and wserial == serial then
    unregister(id, S)
    remove({{id, 'timeout'}})
    return reply()
  end
end
if call('HGET', p, 'holder') == S and requeue_all(id) > 0 then wake(id) end
return reply()
