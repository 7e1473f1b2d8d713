-- ARGV[8]: id.
local id = ARGV[8]
if call('EXISTS', pk(id)) == 0 then return reply('unknown') end
remove({{id, 'sign-out'}})
return reply('ok')
