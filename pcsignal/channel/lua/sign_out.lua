-- arg 1: id.
local id = arg(1)
if call('EXISTS', pk(id)) == 0 then return reply('unknown') end
remove({{id, 'sign-out'}})
return reply('ok')
