-- Order per key, for a subscriber with `order_by`: the functions the
-- fan-out, copy, commit and replay scripts share (each is sent with this
-- text in front of it; see order.rs).
--
-- Of the events of one key only one, its holder, is in the subscriber's
-- stream at a time; the others wait in the key's list, oldest first. Any
-- consumer may take any entry of the stream, so keys run in parallel, and
-- a key's next event enters the stream only when its holder is committed
-- or dead-lettered, in the script that does it: whatever the number of
-- hosts, however they crash, one event of a key runs at a time, in the
-- order the events were routed. A retry stays pending, so it holds its key
-- (and only it). Nothing is kept per key once it is quiet.
--
-- Keys: the holders (hash: key -> the holder's stream id, or
-- 'park:<dlq id>' while a dead letter parks the key); held (sorted set:
-- each key with events waiting -> when its oldest was routed, ms); parked
-- (sorted set: each parked key -> when it was parked, ms); the key's list
-- of waiting events, each '<ms routed> <data>'.

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

-- Routes `data` of `key` into `stream`: as the key's holder if it has
-- none, else to the end of the key's list.
local function order_admit(stream, holders, held, waiting, key, data, now)
  if redis.call('HEXISTS', holders, key) == 1 then
    if redis.call('RPUSH', waiting, now .. ' ' .. data) == 1 then
      redis.call('ZADD', held, now, key)
    end
  else
    local id = redis.call('XADD', stream, '*', 'data', data, 'key', key)
    redis.call('HSET', holders, key, id)
  end
end

-- Hands `key` on from `holder` to its next waiting event, which enters
-- `stream` as the new holder; with none waiting, the key is forgotten.
-- Nothing happens if `holder` no longer holds the key.
local function order_release(stream, holders, held, waiting, key, holder)
  if redis.call('HGET', holders, key) ~= holder then
    return
  end
  local next = redis.call('LPOP', waiting)
  if not next then
    redis.call('HDEL', holders, key)
    return
  end
  local space = string.find(next, ' ', 1, true)
  local id = redis.call('XADD', stream, '*', 'data', string.sub(next, space + 1), 'key', key)
  redis.call('HSET', holders, key, id)
  local head = redis.call('LINDEX', waiting, 0)
  if head then
    redis.call('ZADD', held, string.sub(head, 1, string.find(head, ' ', 1, true) - 1), key)
  else
    redis.call('ZREM', held, key)
  end
end

-- Parks `key` on the dead letter `dlq_id` of its holder `holder`: its
-- next events wait until the letter is replayed or skipped.
local function order_park(holders, parked, key, holder, dlq_id, now)
  if redis.call('HGET', holders, key) ~= holder then
    return
  end
  redis.call('HSET', holders, key, 'park:' .. dlq_id)
  redis.call('ZADD', parked, now, key)
end
