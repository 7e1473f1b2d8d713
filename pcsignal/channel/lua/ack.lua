-- ARGV[8..9]: id, n: items numbered up to n were read.
local id, n = ARGV[8], tonumber(ARGV[9])
local p = pk(id)
if call('EXISTS', p) == 0 then return reply() end
local freed, bytes = 0, 0
for _, key in ipairs({fk(id), qk(id)}) do
  while true do
    local e = call('LINDEX', key, 0)
    local en = e and tonumber(string.match(e, '^(%d+)#'))
    if not en or en > n then break end
    call('LPOP', key)
    freed = freed + 1
    bytes = bytes + body_bytes(e)
  end
end
if freed > 0 then
  call('HINCRBY', p, 'count', 0 - freed)
  call('HINCRBY', p, 'bytes', 0 - bytes)
  call('INCRBY', ITEMS, 0 - freed)
  call('INCRBY', BYTES, 0 - bytes)
  if call('LLEN', fk(id)) == 0 then clear_holder(id) end
  wake(id)
end
return reply()
