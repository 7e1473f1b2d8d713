-- arg 1..5: from, to, '1' if there is a content type, content type, body.
-- The item: 'm<from> <body bytes> <type bytes> <type><body>', or '... - <body>'.
local from, to, body = arg(1), arg(2), arg(5)
if call('EXISTS', pk(from)) == 0 or call('EXISTS', pk(to)) == 0 then return reply('unknown') end
if tonumber(call('GET', BYTES) or 0) + #body > MAXB then return reply('busy') end
local p = pk(to)
if tonumber(call('HGET', p, 'count')) >= MAXQ then return reply('full') end
local ct = arg(3) == '1' and (#arg(4) .. ' ' .. arg(4)) or '- '
call('RPUSH', qk(to), 'm' .. from .. ' ' .. #body .. ' ' .. ct .. body)
call('HINCRBY', p, 'count', 1)
call('HINCRBY', p, 'bytes', #body)
call('INCRBY', ITEMS, 1)
call('INCRBY', BYTES, #body)
wake(to)
return reply('ok')
