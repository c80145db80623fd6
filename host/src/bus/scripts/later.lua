-- Work for later: the functions the commit and the publish of a delayed
-- event share with move.lua (each is sent with this text in front of it;
-- see later.rs).
--
-- A stream's schedule is a sorted set beside it (`<stream>:schedule`, in
-- its hash slot): each member is one entry to add to the stream when it is
-- due, its score the time it is due (ms, on Redis's clock). A member is
-- cmsgpack of {unique tag, field, value, field, value...}: the tag (the id
-- of the entry it came from, or of the event) keeps two equal entries
-- apart. Nothing of it is in a host: any host moves what is due (move.lua),
-- in the script that removes it from the schedule.

-- The time on Redis's clock, in ms: one clock for every host.
local function later_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When `spec` is due: 'd<ms>' is ms after `now`, 'a<ms>' a Unix time in
-- ms; nil if it is neither.
local function later_due(spec, now)
  local ms = tonumber(string.sub(spec, 2))
  if not ms or ms < 0 then return nil end
  local how = string.sub(spec, 1, 1)
  if how == 'd' then return now + ms end
  if how == 'a' then return ms end
  return nil
end

-- Schedules the entry `fields` ({tag, field, value, ...}) into `schedule`,
-- due at `due`.
local function later_add(schedule, due, fields)
  redis.call('ZADD', schedule, due, cmsgpack.pack(fields))
end

-- Schedules entry `id` of `stream` (pending, acknowledged by the caller)
-- to come back at `due` as attempt `attempt`: its fields, with `attempt`
-- set. Nothing if the entry is gone (trimmed), as a claim would find
-- nothing either.
local function later_retry(stream, schedule, id, due, attempt)
  local found = redis.call('XRANGE', stream, id, id)[1]
  if not found then return end
  local fields, kept = found[2], {id}
  for j = 1, #fields, 2 do
    if fields[j] ~= 'attempt' then
      kept[#kept + 1] = fields[j]
      kept[#kept + 1] = fields[j + 1]
    end
  end
  kept[#kept + 1] = 'attempt'
  kept[#kept + 1] = attempt
  later_add(schedule, due, kept)
end
