#!lua
-- Fan-out of one batch read from events:all, atomically.
--
-- The shebang line makes Redis (7.0+) check its memory before the script
-- runs: over `maxmemory` it is refused whole (-OOM), having written nothing.
--
-- KEYS[1] events:all   KEYS[2] events:all:dlq   KEYS[3..2+S] the S
-- subscriber streams, then their S held sets (see order.lua; a subscriber
-- without `order_by` never touches its own), then the lists of the keys
-- this batch routes.
-- ARGV[1] the group of events:all, ARGV[2] S, then one record per entry:
--   id, n >= 0, n targets, data   -- copy data to those streams
--   id, -1, payload               -- dead-letter payload
-- a target is `t, 0` (stream KEYS[t]) or, for a subscriber that keeps
-- order per key, `t, w, key`, w > 0 (the key's list is the w-th after
-- the held sets, KEYS[2 + 2S + w]).
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
local S = tonumber(ARGV[2])
if not S or S < 0 then
  return redis.error_reply('ERR fan-out: malformed header')
end
local used = {[1] = 'stream'}
local i = 3
while i <= n do
  local c = tonumber(ARGV[i + 1])
  if not c or c < -1 then
    return redis.error_reply('ERR fan-out: malformed record at argument ' .. i)
  end
  i = i + 2
  if c < 0 then
    used[2] = 'stream'
  end
  for _ = 1, c do
    local t, w = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    if not t or t < 3 or t > 2 + S or not w then
      return redis.error_reply('ERR fan-out: bad target at argument ' .. i)
    end
    used[t] = 'stream'
    if w == 0 then
      i = i + 2
    else
      if w < 0 or KEYS[2 + 2 * S + w] == nil then
        return redis.error_reply('ERR fan-out: bad key list at argument ' .. i)
      end
      used[t + S] = 'zset'
      i = i + 3
    end
  end
  i = i + 1
end
if i ~= n + 1 then
  return redis.error_reply('ERR fan-out: the last record runs past the arguments')
end

-- Only the keys this batch writes: a broken subscriber stream refuses the
-- entries routed to it, not every batch.
local refused = order_types_error(used)
if refused then return redis.error_reply(refused) end

local group = ARGV[1]
local now = order_now()
local skipped = 0
i = 3
while i <= n do
  local id, c = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local acked = redis.call('XACK', KEYS[1], group, id) == 1
  if c >= 0 then
    -- Where the data is: after the targets, each two or three arguments.
    local d = i
    for _ = 1, c do
      d = d + (ARGV[d + 1] == '0' and 2 or 3)
    end
    local data = ARGV[d]
    if acked then
      for _ = 1, c do
        local t, w = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
        if w == 0 then
          redis.call('XADD', KEYS[t], '*', 'data', data)
          i = i + 2
        else
          order_admit(KEYS[t], KEYS[t + S], KEYS[2 + 2 * S + w], ARGV[i + 2], data, now)
          i = i + 3
        end
      end
    else
      skipped = skipped + 1
    end
    i = d + 1
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
