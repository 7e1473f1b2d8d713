-- arg 1..2: session lifetime, most peers to reap at once.
-- Keeps this session registered, retires sessions whose instance stopped
-- saying so, and removes peers past their deadline (each claimed once).
local registered = call('ZSCORE', SESSIONS, S)
call('ZADD', SESSIONS, NOW + tonumber(arg(1)), S)
for _, s in ipairs(call('ZRANGEBYSCORE', SESSIONS, '-inf', '(' .. NOW)) do retire(s) end
local expired = call('ZRANGEBYSCORE', DEADLINES, '-inf', NOW, 'LIMIT', 0, tonumber(arg(2)))
local pending = {}
for i = #expired, 1, -1 do table.insert(pending, {expired[i], 'timeout'}) end
remove(pending)
local next_deadline = call('ZRANGE', DEADLINES, 0, 0, 'WITHSCORES')[2] or ''
return reply(registered and 1 or 0, next_deadline)
