-- Commit of one batch of a subscriber's results, atomically.
--
-- KEYS[1] the subscriber stream   KEYS[2] its DLQ   KEYS[3] its state hash
-- KEYS[4] events:all (where published events go)
-- ARGV[1] the subscriber's group, ARGV[2] q, then q ids handled ok with no
-- effects, then one record per other entry:
--   'ok', id, p, p payloads, s, s (field, value) pairs, d, d fields
--   'dlq', id, payload
--
-- Each record's entry is acknowledged first; its effects (or its dead
-- letter) are written only if it was still pending. A handler that ran
-- twice for one entry (a crash, a reclaim) therefore commits its effects
-- exactly once. Results without effects have nothing to guard: one XACK
-- takes them all.
--
-- Returns how many entries were skipped: already acknowledged by another
-- consumer, nothing of theirs written.

for k = 2, 4 do
  local t = redis.call('TYPE', KEYS[k])['ok']
  local want = (k == 3) and 'hash' or 'stream'
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', not a ' .. want)
  end
end

local group = ARGV[1]
local quiet = tonumber(ARGV[2])
local skipped = 0

-- Lua's unpack takes a few thousand values at most.
for from = 3, 2 + quiet, 4000 do
  local to = math.min(from + 3999, 2 + quiet)
  local acked = redis.call('XACK', KEYS[1], group, unpack(ARGV, from, to))
  skipped = skipped + (to - from + 1) - acked
end

local i = 3 + quiet
while i <= #ARGV do
  local kind, id = ARGV[i], ARGV[i + 1]
  i = i + 2
  local acked = redis.call('XACK', KEYS[1], group, id) == 1
  if kind == 'ok' then
    local p = tonumber(ARGV[i])
    i = i + 1
    if acked then
      for j = i, i + p - 1 do
        redis.call('XADD', KEYS[4], '*', 'data', ARGV[j])
      end
    end
    i = i + p
    local s = tonumber(ARGV[i])
    i = i + 1
    if acked then
      for j = i, i + 2 * s - 1, 2 do
        redis.call('HSET', KEYS[3], ARGV[j], ARGV[j + 1])
      end
    end
    i = i + 2 * s
    local d = tonumber(ARGV[i])
    i = i + 1
    if acked and d > 0 then
      redis.call('HDEL', KEYS[3], unpack(ARGV, i, i + d - 1))
    end
    i = i + d
    if not acked then skipped = skipped + 1 end
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
