-- ARGV[8..12]: from, to, '1' if there is a content type, content type, body.
-- The item: 'm<from> <body bytes> <type bytes> <type><body>', or '... - <body>'.
local from, to, body = ARGV[8], ARGV[9], ARGV[12]
if call('EXISTS', pk(from)) == 0 or call('EXISTS', pk(to)) == 0 then return reply('unknown') end
if tonumber(call('GET', BYTES) or 0) + #body > MAXB then return reply('busy') end
local p = pk(to)
if tonumber(call('HGET', p, 'count')) >= MAXQ then return reply('full') end
local ct = ARGV[10] == '1' and (#ARGV[11] .. ' ' .. ARGV[11]) or '- '
call('RPUSH', qk(to), 'm' .. from .. ' ' .. #body .. ' ' .. ct .. body)
call('HINCRBY', p, 'count', 1)
call('HINCRBY', p, 'bytes', #body)
call('INCRBY', ITEMS, 1)
call('INCRBY', BYTES, #body)
wake(to)
return reply('ok')
