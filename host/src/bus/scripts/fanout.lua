#!lua
-- Fan-out of one batch read from events:all, atomically.
--
-- The shebang line makes Redis (7.0+) check its memory before the script
-- runs: over `maxmemory` it is refused whole (-OOM), having written nothing.
--
-- KEYS[1] events:all   KEYS[2] events:all:dlq   KEYS[3..] subscriber streams
-- ARGV[1] the group of events:all, then one record per entry:
--   id, n >= 0, n indexes into KEYS, data    -- copy data to those streams
--   id, -1, payload                          -- dead-letter payload
--
-- Each entry is acknowledged first and copied only if it was still pending:
-- an entry that another consumer reclaimed and routed meanwhile is skipped,
-- so no event is ever fanned out twice. Everything that could fail (the
-- shape of the records, the types of the keys they write) is checked
-- before the first write: a script does not roll back.
--
-- Returns how many entries were skipped that way.

-- Pass 1: the shape of every record, and the keys it writes.
local n = #ARGV
local tonumber = tonumber
local used = {[1] = true}
local i = 2
while i <= n do
  local c = tonumber(ARGV[i + 1])
  if not c or c < -1 then
    return redis.error_reply('ERR fan-out: malformed record at argument ' .. i)
  end
  if c < 0 then
    used[2] = true
    c = 0
  end
  for t = i + 2, i + 1 + c do
    local k = tonumber(ARGV[t])
    if not k or k < 3 or KEYS[k] == nil then
      return redis.error_reply('ERR fan-out: bad stream index at argument ' .. t)
    end
    used[k] = true
  end
  i = i + 3 + c
end
if i ~= n + 1 then
  return redis.error_reply('ERR fan-out: the last record runs past the arguments')
end

-- Only the keys this batch writes: a broken subscriber stream refuses the
-- entries routed to it, not every batch.
for k in pairs(used) do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', not a stream')
  end
end

local group = ARGV[1]
local skipped = 0
i = 2
while i <= n do
  local id, c = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local acked = redis.call('XACK', KEYS[1], group, id) == 1
  if c >= 0 then
    if acked then
      local data = ARGV[i + c]
      for t = 0, c - 1 do
        redis.call('XADD', KEYS[tonumber(ARGV[i + t])], '*', 'data', data)
      end
    else
      skipped = skipped + 1
    end
    i = i + c + 1
  else
    if acked then
      redis.call('XADD', KEYS[2], '*', 'data', ARGV[i])
    else
      skipped = skipped + 1
    end
    i = i + 1
  end
end
return skipped
