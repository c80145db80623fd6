-- Fan-out of one batch read from events:all, atomically.
--
-- KEYS[1] events:all   KEYS[2] events:all:dlq   KEYS[3..] subscriber streams
-- ARGV[1] the group of events:all, then one record per entry:
--   id, n >= 0, n indexes into KEYS, data    -- copy data to those streams
--   id, -1, payload                          -- dead-letter payload
--
-- Each entry is acknowledged first and copied only if it was still pending:
-- an entry that another consumer reclaimed and routed meanwhile is skipped,
-- so no event is ever fanned out twice.
--
-- Returns how many entries were skipped that way.

-- Refuse before writing anything rather than fail half-way.
for k = 2, #KEYS do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', not a stream')
  end
end

local group = ARGV[1]
local skipped = 0
local i = 2
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local acked = redis.call('XACK', KEYS[1], group, id) == 1
  if n >= 0 then
    if acked then
      local data = ARGV[i + n]
      for t = 0, n - 1 do
        redis.call('XADD', KEYS[tonumber(ARGV[i + t])], '*', 'data', data)
      end
    else
      skipped = skipped + 1
    end
    i = i + n + 1
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
