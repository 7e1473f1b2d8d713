-- arg 1..7: id, serial, window, gen, fresh, contest, live (a wait is parked).  The peer's waits go
-- to this session from now on; what it may have goes out at once (as
-- events in the reply).  Fresh ('1'): this instance had no registration for
-- the peer, so whatever it still holds in flight from an earlier one is
-- returned first (its deliveries, if still on their way, will be ignored).
-- Contest ('1'): a wait parked here reclaims the peer after a replace it
-- may have been newer than; the other instance gives in.
local id = arg(1)
local p = pk(id)
if call('EXISTS', p) == 0 then return reply('unknown') end
if arg(5) == '1' and call('HGET', p, 'holder') == S then requeue_all(id) end
register(id, arg(2), arg(3), arg(4), tonumber(arg(6)), arg(7) == '1')
wake(id)
return reply('ok')
