#!lua
-- Copies of ingress entries to one subscriber's stream, on a Redis Cluster,
-- where the copy and the acknowledgement of the ingress entry live on
-- different shards and cannot be one atomic step. A fan-out that crashes
-- between the two, or two that route one entry, copy it again: this
-- script drops an event it copied to this subscriber lately. An event is
-- the same as one copied before if its id and its content are: ids can be
-- foreseen (a handler's publishes derive theirs from the delivery), so an
-- id alone would let a producer who writes it first suppress the real
-- event. Every honest repeat is of the same bytes.
--
-- The shebang line makes Redis check its memory before the script runs:
-- over `maxmemory` it is refused whole (-OOM), having written nothing.
--
-- KEYS[1] the subscriber stream   KEYS[2] its seen set (a sorted set:
-- "<event id> <SHA-1 of its data>" -> when it was copied, in ms; and
-- "<event id>" alone, so that an id seen with other content is told)
-- KEYS[3] its held set (see order.lua), then the lists of the keys the
-- batch copies to
-- ARGV[1] how long (ms) an id is remembered, then per copy: event id,
-- data, w, and if w > 0 the event's key (its list is KEYS[3 + w]); w = 0:
-- the subscriber keeps no order.
--
-- Everything that could fail is checked before the first write: a script
-- does not roll back. The copy and its id are written together, so an id
-- is remembered if and only if its copy is in the stream.
--
-- Returns {how many entries were dropped as copies already made, how many
-- were copied though their id was seen lately with other content}: both
-- are copied, and the second count is a forgery, or a producer reusing ids.

local n = #ARGV
local window = tonumber(ARGV[1])
if not window then
  return redis.error_reply('ERR copy: malformed arguments')
end
local used = {[1] = 'stream', [2] = 'zset'}
local i = 2
while i <= n do
  local w = tonumber(ARGV[i + 2])
  if ARGV[i + 1] == nil or not w or w < 0 or (w > 0 and KEYS[3 + w] == nil) then
    return redis.error_reply('ERR copy: malformed copy at argument ' .. i)
  end
  if w == 0 then
    i = i + 3
  else
    used[3] = 'zset'
    i = i + 4
  end
end
if i ~= n + 1 then
  return redis.error_reply('ERR copy: the last copy runs past the arguments')
end
local refused = order_types_error(used)
if refused then return redis.error_reply(refused) end

local now = order_now()

-- Forget ids past the window, a bounded number per call (a long pause
-- must not turn into one long call while Redis serves no one else); each
-- call removes more than it adds, so the set keeps pace.
local old = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. (now - window))
if old > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, math.min(old, n + 1000) - 1)
end

local dropped, reused = 0, 0
i = 2
while i <= n do
  local id, data, w = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local seen = id .. ' ' .. redis.sha1hex(data)
  if redis.call('ZADD', KEYS[2], 'NX', now, seen) == 1 then
    if w == 0 then
      redis.call('XADD', KEYS[1], '*', 'data', data)
    else
      order_admit(KEYS[1], KEYS[3], KEYS[3 + w], ARGV[i + 3], data, now)
    end
    if redis.call('ZADD', KEYS[2], now, id) == 0 then
      reused = reused + 1
    end
  else
    dropped = dropped + 1
  end
  i = i + (w == 0 and 3 or 4)
end
return {dropped, reused}
