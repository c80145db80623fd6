-- Skip of dead letters that park their keys (a subscriber with
-- `order_by` and `on_dead_letter = "park"`): each key moves on to its next
-- event, as if its dead letter had not parked it. The letters stay in the
-- DLQ, where they can still be replayed (then as new events of their key)
-- or purged.
--
-- KEYS[1] the DLQ   KEYS[2] the subscriber's stream   KEYS[3], KEYS[4] its
-- held and parked sets (see order.lua), then the lists of their keys.
-- ARGV: per letter, its id, w > 0 and its key (its list is KEYS[4 + w]).
--
-- Returns the ids of the letters whose keys moved on; a letter that does
-- not park its key (skipped already, or replayed) changes nothing.

local n = #ARGV
local used = {[2] = 'stream', [3] = 'zset', [4] = 'zset'}
if n % 3 ~= 0 then
  return redis.error_reply('ERR skip: malformed arguments')
end
for i = 1, n, 3 do
  local w = tonumber(ARGV[i + 1])
  if not w or w < 1 or KEYS[4 + w] == nil then
    return redis.error_reply('ERR skip: malformed letter at argument ' .. i)
  end
end
local refused = order_types_error(used)
if refused then return redis.error_reply(refused) end

local released = {}
for i = 1, n, 3 do
  local id, w, key = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if order_parks(KEYS[4 + w], id) then
    order_release(KEYS[2], KEYS[3], KEYS[4 + w], key)
    redis.call('ZREM', KEYS[4], key)
    released[#released + 1] = id
  end
end
return released
