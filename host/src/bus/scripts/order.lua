-- Order per key, for a subscriber with `order_by`: the functions the
-- fan-out, copy, commit and replay scripts share (each is sent with this
-- text in front of it; see order.rs).
--
-- Of the events of one key only one, its holder, is in the subscriber's
-- stream at a time; the others wait in the key's list. Any consumer may
-- take any entry of the stream, so keys run in parallel, and a key's next
-- event enters the stream only when its holder is committed or
-- dead-lettered, in the script that does it: whatever the number of
-- hosts, however they crash, one event of a key runs at a time, in the
-- order the events were routed. A retry stays pending, so it holds its key
-- (and only it). Nothing is kept for a key once it is quiet.
--
-- The key's list is its holder then its waiting events, oldest first,
-- each '<ms routed> <data>'; the holder's element is 'park:<dlq id>' while
-- a dead letter parks the key. An entry of the stream that holds a key
-- says so in its field `key`: only these scripts write that field, one
-- entry per key at a time, so a committed entry with a key is its key's
-- holder. Beside the lists: held (sorted set: each key with events
-- waiting -> when the oldest of them was routed, ms) and parked (sorted set: each parked key -> when it was
-- parked, ms). Each call costs a few list commands and no lookup: this
-- runs once per event.

-- The time on Redis's clock, in ms: one clock for every host.
local function order_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Refused unless `key` is of type `want` or absent: checked before the
-- first write, since a script does not roll back.
local function order_type_error(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= want and t ~= 'none' then
    return 'WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. want
  end
  return nil
end

-- The first refusal of the keys in `used` (index into KEYS -> the type
-- it must be, or absent), or nil: every script checks what it touches
-- before its first write.
local function order_types_error(used)
  for k, want in pairs(used) do
    local err = order_type_error(KEYS[k], want)
    if err then return err end
  end
  return nil
end

-- The lists are not type-checked before the first write, as every other
-- key is: that would cost a command per event and per script. Their
-- commands are made with pcall instead, so a list whose key someone set
-- to another type cannot stop a script half-way: the events of that key
-- go unordered (as an event without a key does), and nothing else.

-- Routes `data` of `key` into `stream`: as the key's holder if it has
-- none (returns its stream id), else to the end of the key's list.
local function order_admit(stream, held, list, key, data, now)
  local n = redis.pcall('RPUSH', list, now .. ' ' .. data)
  if type(n) ~= 'number' then
    return redis.call('XADD', stream, '*', 'data', data)
  end
  if n == 1 then
    return redis.call('XADD', stream, '*', 'data', data, 'key', key)
  elseif n == 2 then
    redis.call('ZADD', held, now, key)
  end
  return nil
end

-- Hands `key` on from its holder (done, or its dead letter skipped) to
-- its next waiting event, which enters `stream` as the new holder; with
-- none waiting, the key is forgotten (its list is gone).
local function order_release(stream, held, list, key)
  redis.pcall('LPOP', list)
  local next = redis.pcall('LRANGE', list, 0, 1)
  if next.err or #next == 0 then
    return
  end
  local space = string.find(next[1], ' ', 1, true)
  if space then
    redis.call('XADD', stream, '*', 'data', string.sub(next[1], space + 1), 'key', key)
  end
  if #next == 1 then
    redis.call('ZREM', held, key)
  else
    -- The key's oldest waiting event is now the one after the holder.
    local routed = tonumber(string.sub(next[2], 1, (string.find(next[2], ' ', 1, true) or 1) - 1))
    if routed then
      redis.call('ZADD', held, routed, key)
    end
  end
end

-- Parks `key` on its holder's dead letter `dlq_id`: its next events wait
-- until the letter is replayed or skipped.
local function order_park(parked, list, key, dlq_id, now)
  local set = redis.pcall('LSET', list, 0, 'park:' .. dlq_id)
  if not set.err then
    redis.call('ZADD', parked, now, key)
  end
end

-- Whether the dead letter `dlq_id` parks `key`.
local function order_parks(list, dlq_id)
  return redis.pcall('LINDEX', list, 0) == 'park:' .. dlq_id
end
