-- Replay of dead letters: each entry moved from a DLQ back into the
-- stream it failed from, atomically.
--
-- KEYS[1] the DLQ   KEYS[2] the stream to replay into
-- KEYS[3] (a subscriber's) the stream of its requests to send after a
-- commit: a letter marked `after_commit` (a request that was never sent,
-- not an event) goes back there, to be sent again with the same key.
-- ARGV[1] the DLQ's consumer group (LeanMQ's DLQ readers), then entry ids.
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
-- Returns {dlq id, new stream id, ...} for every entry moved.

for k = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', not a stream')
  end
end

local moved = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 1 then
    local fields, into = found[1][2], KEYS[2]
    for f = 1, #fields - 1, 2 do
      if fields[f] == 'after_commit' and KEYS[3] then into = KEYS[3] end
    end
    local new = redis.call('XADD', into, '*', unpack(fields))
    redis.call('XDEL', KEYS[1], id)
    -- The group may not exist (a DLQ LeanMQ never opened): nothing to ack.
    redis.pcall('XACK', KEYS[1], ARGV[1], id)
    moved[#moved + 1] = id
    moved[#moved + 1] = new
  end
end
return moved
