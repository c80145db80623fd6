-- Publishes one tick of a schedule, once across every host that runs it.
--
-- KEYS[1] the schedule's hash   KEYS[2] the ingress stream (same slot)
-- ARGV[1] the tick, ms since the epoch
-- ARGV[2] how the host came to it: 'on-time' (it waited for the tick),
--         'once' or 'skip' (a missed tick, and what the schedule does with
--         missed ticks)
-- ARGV[3] the event: the `data` field of the entry
-- ARGV[4] the schedule's timing (its cron and every, as written)
--
-- The hash holds `tick` (the newest tick published), `id` (its entry),
-- `timing` (the timing it was published by: a schedule whose timing
-- changed starts afresh, without catching up) and `skipped` (the newest
-- missed tick left unpublished).
-- Returns {1, entry id} if published; {0} if this tick or a later one was
-- published already (or, for a missed tick, left out); {2} if it was left
-- unpublished.

local tick = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'tick', 'timing', 'skipped')
local last = tonumber(state[1])
-- Whether this schedule, with this timing, ran before.
local known = state[2] == ARGV[4]
local skipped = tonumber(state[3])
local missed = ARGV[2] ~= 'on-time'
if last and last >= tick then return {0} end
-- A missed tick left out stays out for every host that missed it too.
if missed and skipped and skipped >= tick then return {0} end
if not known then redis.call('HSET', KEYS[1], 'timing', ARGV[4]) end

-- A missed tick is published only by a schedule that ran before (no
-- catch-up on the first start) and says `once`. It does not move `tick`:
-- a host that waited for this tick may still publish it.
if missed and (not known or ARGV[2] == 'skip') then
  redis.call('HSET', KEYS[1], 'skipped', ARGV[1])
  return {2}
end

local id = redis.call('XADD', KEYS[2], '*', 'data', ARGV[3])
redis.call('HSET', KEYS[1], 'tick', ARGV[1], 'id', id)
return {1, id}
