-- Skip of dead letters that park their keys (a subscriber with
-- `order_by` and `on_dead_letter = "park"`): each key moves on to its next
-- event, as if its dead letter had not parked it. The letters stay in the
-- DLQ, where they can still be replayed (then as new events of their key)
-- or purged.
--
-- KEYS[1] the DLQ   KEYS[2] the subscriber's stream   KEYS[3..5] its order
-- holders, held and parked sets (see order.lua), then waiting lists.
-- ARGV: per letter, its id, w > 0 and its key (its list is KEYS[5 + w]).
--
-- Returns the ids of the letters whose keys moved on; a letter that does
-- not park its key (skipped already, or replayed) changes nothing.

local n = #ARGV
local used = {[2] = 'stream', [3] = 'hash', [4] = 'zset', [5] = 'zset'}
if n % 3 ~= 0 then
  return redis.error_reply('ERR skip: malformed arguments')
end
for i = 1, n, 3 do
  local w = tonumber(ARGV[i + 1])
  if not w or w < 1 or KEYS[5 + w] == nil then
    return redis.error_reply('ERR skip: malformed letter at argument ' .. i)
  end
  used[5 + w] = 'list'
end
for k, want in pairs(used) do
  local err = order_type_error(KEYS[k], want)
  if err then return redis.error_reply(err) end
end

local released = {}
for i = 1, n, 3 do
  local id, w, key = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local holder = 'park:' .. id
  if redis.call('HGET', KEYS[3], key) == holder then
    order_release(KEYS[2], KEYS[3], KEYS[4], KEYS[5 + w], key, holder)
    redis.call('ZREM', KEYS[5], key)
    released[#released + 1] = id
  end
end
return released
