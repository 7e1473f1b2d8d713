-- arg 1..5: from, to, '1' if there is a content type, content type, body.
-- The item: 'm<from> <body bytes> <type bytes> <type><body>', or '... - <body>'.
local from, to, body = arg(1), arg(2), arg(5)
if call('EXISTS', pk(from), pk(to)) < 2 then return reply('unknown') end
if bytes_held() + #body > MAXB then return reply('busy') end
local fits, inflight = room(to)
if not fits then return reply('full') end
local ct = arg(3) == '1' and (#arg(4) .. ' ' .. arg(4)) or '- '
call('RPUSH', qk(to), 'm' .. from .. ' ' .. #body .. ' ' .. ct .. body)
items_delta = items_delta + 1
bytes_delta = bytes_delta + #body
wake(to, inflight)
return reply('ok')
