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
-- ARGV[1] how long (ms) an id is remembered, then pairs of: event id, data
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
if not window or n % 2 ~= 1 then
  return redis.error_reply('ERR copy: malformed arguments')
end
for k, want in ipairs({'stream', 'zset'}) do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', not a ' .. want)
  end
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- Forget ids past the window, a bounded number per call (a long pause
-- must not turn into one long call while Redis serves no one else); each
-- call removes more than it adds, so the set keeps pace.
local old = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. (now - window))
if old > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, math.min(old, n + 1000) - 1)
end

local dropped, reused = 0, 0
for i = 2, n, 2 do
  local seen = ARGV[i] .. ' ' .. redis.sha1hex(ARGV[i + 1])
  if redis.call('ZADD', KEYS[2], 'NX', now, seen) == 1 then
    redis.call('XADD', KEYS[1], '*', 'data', ARGV[i + 1])
    if redis.call('ZADD', KEYS[2], now, ARGV[i]) == 0 then
      reused = reused + 1
    end
  else
    dropped = dropped + 1
  end
end
return {dropped, reused}
