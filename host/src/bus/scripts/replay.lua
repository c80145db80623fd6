-- Replay of dead letters: each entry moved from a DLQ back into the
-- stream it failed from, atomically.
--
-- KEYS[1] the DLQ   KEYS[2] the stream to replay into
-- KEYS[3] (a subscriber's) the stream of its requests to send after a
-- commit: a letter marked `after_commit` (a request that was never sent,
-- not an event) goes back there, to be sent again with the same key; used
-- only if ARGV[2] is '1'.
-- KEYS[4], KEYS[5] the subscriber's held and parked sets (see order.lua),
-- then the lists of the letters' keys.
-- ARGV[1] the DLQ's consumer group (LeanMQ's DLQ readers), ARGV[2], then
-- per entry: its id, w, and if w > 0 the key its letter carries (its list
-- is KEYS[5 + w]).
--
-- Per entry, in one script: read it, XADD its fields (the `data` object
-- with its `_failures` history) to the stream under a new id, so its
-- delivery count, and with it the attempt, starts again at 1; then XDEL it
-- from the DLQ and XACK it in the DLQ's group, so LeanMQ's readers keep no
-- pending entry for it. A replay interrupted between two scripts has moved
-- each entry or not: none is in both places, none is lost. An id no
-- longer in the DLQ (replayed or purged meanwhile) is skipped, so a
-- replay run twice moves nothing twice.
--
-- A letter with a key (of a subscriber that keeps order per key) goes
-- back in its key's order: if it parks its key, it becomes the key's
-- holder again, first in line; else it is routed like a new event of its
-- key (behind the key's holder, if it has one).
--
-- Returns {dlq id, new stream id ('' while it waits behind its key), ...}
-- for every entry moved.

local n = #ARGV
local used = {[1] = 'stream', [2] = 'stream'}
if ARGV[2] == '1' then used[3] = 'stream' end
local i = 3
while i <= n do
  local w = tonumber(ARGV[i + 1])
  if not w or w < 0 or (w > 0 and KEYS[5 + w] == nil) then
    return redis.error_reply('ERR replay: malformed entry at argument ' .. i)
  end
  if w > 0 then
    used[4], used[5] = 'zset', 'zset'
    i = i + 3
  else
    i = i + 2
  end
end
local refused = order_types_error(used)
if refused then return redis.error_reply(refused) end

local moved = {}
local now
i = 3
while i <= n do
  local id, w = ARGV[i], tonumber(ARGV[i + 1])
  local key = w > 0 and ARGV[i + 2] or nil
  i = i + (w > 0 and 3 or 2)
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 1 then
    local fields, into = found[1][2], KEYS[2]
    local data
    for f = 1, #fields - 1, 2 do
      if fields[f] == 'after_commit' and ARGV[2] == '1' then into = KEYS[3] end
      if fields[f] == 'data' then data = fields[f + 1] end
    end
    local new = ''
    if key and data then
      local list = KEYS[5 + w]
      now = now or order_now()
      if order_parks(list, id) then
        redis.call('LSET', list, 0, now .. ' ' .. data)
        new = redis.call('XADD', into, '*', 'data', data, 'key', key)
        redis.call('ZREM', KEYS[5], key)
      else
        -- The key's holder now, or waiting behind it.
        new = order_admit(into, KEYS[4], list, key, data, now) or ''

      end
    else
      new = redis.call('XADD', into, '*', unpack(fields))
    end
    redis.call('XDEL', KEYS[1], id)
    -- The group may not exist (a DLQ LeanMQ never opened): nothing to ack.
    redis.pcall('XACK', KEYS[1], ARGV[1], id)
    moved[#moved + 1] = id
    moved[#moved + 1] = new
  end
end
return moved
