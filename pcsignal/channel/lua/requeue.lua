-- ARGV[8..9]: id, n: items in flight numbered from n on were not read.
local id = ARGV[8]
if call('EXISTS', pk(id)) == 0 then return reply(0) end
local moved = requeue_from(id, tonumber(ARGV[9]))
if moved > 0 then wake(id) end
return reply(moved)
