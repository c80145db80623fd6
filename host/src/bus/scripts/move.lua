#!lua
-- Moves what is due from a schedule to its stream (see later.lua): each
-- entry is added to the stream and removed from the schedule in this one
-- script, so a host that dies at any point loses none and doubles none.
--
-- KEYS[1] the schedule   KEYS[2] its stream
-- ARGV[1] the most entries to move in this call
--
-- Returns {moved, ms until the next entry is due (-1: none left)}.

local limit = tonumber(ARGV[1])
if not limit or limit < 1 then
  return redis.error_reply('ERR move: malformed limit')
end
-- No type check (this runs every few ms on every host): a key of another
-- type fails its first command, and what was moved before it is whole,
-- each entry added and removed together.
local now = later_now()
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  local ok, fields = pcall(cmsgpack.unpack, member)
  -- What is not one of ours (written by hand) is dropped, not moved: it
  -- would stop the schedule for ever.
  if ok and type(fields) == 'table' and #fields >= 3 and #fields % 2 == 1 then
    redis.call('XADD', KEYS[2], '*', unpack(fields, 2))
  else
    redis.log(redis.LOG_WARNING, 'eventhost: dropped a malformed member of ' .. KEYS[1])
  end
  redis.call('ZREM', KEYS[1], member)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
return {#due, next_due and math.max(0, tonumber(next_due) - now) or -1}
