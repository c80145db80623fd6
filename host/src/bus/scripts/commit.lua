-- Commit of one batch of a subscriber's results, atomically.
--
-- KEYS[1] the subscriber stream   KEYS[2] its DLQ   KEYS[3] its state hash
-- KEYS[4] events:all (where published events go)
-- ARGV[1] the subscriber's group, ARGV[2] '1' if the batch is ordered (one
-- event at a time), ARGV[3] q, then q ids handled ok with no effects and no
-- reads, then one record per other entry, each starting with what its
-- result read, r reads of:
--   field, '0'                 -- it was absent
--   field, '1', value          -- it held this value (1 KiB at most)
--   field, '2', length, stamp  -- it held a larger value, of this length,
--                                 stamped so ('' no stamp): see below
--   'ok', id, r, reads, p, p payloads, s, s (field, value) pairs, d, d fields
--   'dlq', id, r, reads, payload
--   'check', id, r, reads          -- a retry: only checked, stays pending
--
-- Serializable: a record is applied only if every key it read still holds
-- what it saw, checked after the records before it were applied. A value
-- over 1 KiB is not compared (that would copy it into Lua, milliseconds per
-- MiB while Redis serves no one else): its length is, and the stamp its
-- last write by eventhost left in the field '\0stamp:<field>' (the entry
-- id of that write, set by the 'ok' record's encoder). If not,
-- nothing of it is written, its entry stays pending, and its id is
-- returned as a conflict, to run again on fresh state. In an ordered batch
-- every record after a conflict is a conflict too, so no later event
-- commits before the conflicting one has run again; and so is every record
-- after one skipped (below): in an ordered batch, reads of an earlier
-- record's writes are not checked, they hold exactly when it is applied.
--
-- Exactly once: each record's entry is acknowledged first; its effects (or
-- its dead letter) are written only if it was still pending. A handler that
-- ran twice for one entry (a crash, a reclaim) therefore commits its
-- effects once. Results without effects or reads have nothing to guard:
-- one XACK takes them all.
--
-- Returns {skipped, conflict ids...}: skipped counts entries already
-- acknowledged by another consumer, nothing of theirs written.

for k = 2, 4 do
  local t = redis.call('TYPE', KEYS[k])['ok']
  local want = (k == 3) and 'hash' or 'stream'
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', not a ' .. want)
  end
end

local group = ARGV[1]
local ordered = ARGV[2] == '1'
local quiet = tonumber(ARGV[3])
local skipped = 0
local result = {0}

-- Lua's unpack takes a few thousand values at most.
for from = 4, 3 + quiet, 4000 do
  local to = math.min(from + 3999, 3 + quiet)
  local acked = redis.call('XACK', KEYS[1], group, unpack(ARGV, from, to))
  skipped = skipped + (to - from + 1) - acked
end

-- Whether the r reads from ARGV[i] still hold; and where the record goes on.
local function holds(i, r)
  local fresh = true
  for _ = 1, r do
    local field, present = ARGV[i], ARGV[i + 1]
    if present == '1' then
      if fresh and redis.call('HGET', KEYS[3], field) ~= ARGV[i + 2] then fresh = false end
      i = i + 3
    elseif present == '2' then
      if fresh then
        local stamp = redis.call('HGET', KEYS[3], '\0stamp:' .. field) or ''
        fresh = redis.call('HSTRLEN', KEYS[3], field) == tonumber(ARGV[i + 2])
          and stamp == ARGV[i + 3]
      end
      i = i + 4
    else
      if fresh and redis.call('HEXISTS', KEYS[3], field) == 1 then fresh = false end
      i = i + 2
    end
  end
  return fresh, i
end

local blocked = false
local i = 4 + quiet
while i <= #ARGV do
  local kind, id = ARGV[i], ARGV[i + 1]
  local fresh
  fresh, i = holds(i + 3, tonumber(ARGV[i + 2]))
  local apply = fresh and not blocked
  if not apply then
    result[#result + 1] = id
    if ordered then blocked = true end
  end
  local acked = false
  if apply and kind ~= 'check' then
    acked = redis.call('XACK', KEYS[1], group, id) == 1
    if not acked then
      skipped = skipped + 1
      -- Another consumer committed it: what later events of an ordered
      -- batch read of its writes, unchecked, may not be what it wrote.
      if ordered then blocked = true end
    end
  end
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
  elseif kind == 'dlq' then
    if acked then
      redis.call('XADD', KEYS[2], '*', 'data', ARGV[i])
    end
    i = i + 1
  end
end
result[1] = skipped
return result
