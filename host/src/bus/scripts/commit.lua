#!lua
-- Commit of one batch of a subscriber's results, atomically.
--
-- The shebang line makes Redis (7.0+) check its memory before the script
-- runs: over `maxmemory` it is refused whole (-OOM) instead of being let
-- through to write past the limit, as a script without one is.
--
-- KEYS[1] the subscriber stream   KEYS[2] its DLQ   KEYS[3] its state hash
-- KEYS[4] events:all (where published events go)
-- KEYS[5] events:sub:<name>:http (requests to send after the commit)
-- KEYS[6], KEYS[7] its held and parked sets (see order.lua)
-- KEYS[8] its stream's schedule (retries due later: see move.lua)
-- KEYS[9] the schedule of KEYS[4] (events published for later), then the
-- lists of the keys of the batch's entries
-- ARGV[1] the subscriber's group, ARGV[2] '1' if the batch is ordered (one
-- event at a time), ARGV[3] '1' if a dead letter parks its key (else the
-- key moves on), ARGV[4] q, then q ids handled ok with no effects, no
-- reads and no key, then one record per other entry, each starting with
-- its key if it has one (w, key: its list is KEYS[9 + w]; or w = 0) and
-- what its result read, r reads of:
--   field, '0'                 -- it was absent
--   field, '1', value          -- it held this value (1 KiB at most)
--   field, '2', length, stamp  -- it held a larger value, of this length,
--                                 stamped so ('' no stamp): see below
--   'ok', id, w, [key], r, reads, p, p payloads, l, l (when, payload)
--         pairs (published for later: when is 'd<ms>' after now or
--         'a<unix ms>'), s, s (field, value) pairs, d, d fields, h, h
--         requests (queued with send-after-commit, sent by the sender)
--   'dlq', id, w, [key], r, reads, payload
--   'retry', id, w, [key], r, reads, delay, attempt  -- leaves the stream
--         for its schedule, due in delay ms, to come back as attempt
--         `attempt` (its fields, with 'attempt' set): nothing of it waits
--         in a host. An entry with a key still holds it while it waits:
--         its list is not touched, and it comes back with its key
--   'done', id, w, key               -- handled ok, no effects, no reads
--   'adopt', id, w, key, data        -- an entry without a key (requeued by
--         LeanMQ, added by hand, routed before `order_by` was set): it
--         leaves the stream and joins its key's order as a new event; if
--         its key is parked, it takes the dead letter's place, first in
--         line, and the key is parked no more: LeanMQ's requeue of the
--         letter adds the event, then deletes the letter in a second
--         step, so whether the letter is still there says nothing
--
-- An entry with a key holds it (order.lua): committed, it hands the key
-- on to the key's next event; dead-lettered, it does too, or parks the key
-- on its dead letter (which then carries the key, for `dlq replay`).
--
-- All or nothing: a script does not roll back, so everything that could
-- fail is checked before the first write (the shape of every record, the
-- types of the keys they touch), and no write depends on a Lua limit (`unpack` takes about
-- 8,000 values: long lists go in chunks). Refused, it has written nothing
-- and every entry stays pending.
--
-- Serializable: a record is applied only if every key it read still holds
-- what it saw, checked after the records before it were applied. A value
-- over 1 KiB is not compared (that would copy it into Lua, milliseconds per
-- MiB while Redis serves no one else): its length is, and the stamp its
-- last write by eventhost left in the field '\0stamp:<field>' (the entry
-- id of that write, set by the 'ok' record's encoder). If not,
-- nothing of it is written, its entry stays pending, and its id is
-- returned as a conflict, to run again on fresh state. In an ordered batch
-- every record after a conflict is a conflict too, so no later event
-- commits before the conflicting one has run again; and so is every record
-- after one skipped (below): in an ordered batch, reads of an earlier
-- record's writes are not checked, they hold exactly when it is applied.
--
-- Exactly once: each record's entry is acknowledged first; its effects (or
-- its dead letter) are written only if it was still pending. A handler that
-- ran twice for one entry (a crash, a reclaim) therefore commits its
-- effects once. Results without effects or reads have nothing to guard:
-- one XACK takes them all.
--
-- Returns {skipped, blocked, conflict ids...}: skipped counts entries
-- already acknowledged by another consumer, nothing of theirs written;
-- blocked is 1 if an ordered batch stopped committing (a conflict or a
-- skip), so a caller that split a batch holds back what comes after.

local n = #ARGV
local tonumber = tonumber

local function malformed(what)
  return redis.error_reply('ERR commit: malformed ' .. what)
end

-- Pass 1: the shape of every record, before anything is written. Nothing
-- is kept (a table per record would cost more than walking twice), and a
-- count that is not one ends the walk here, before any write.
local quiet = tonumber(ARGV[4])
if ARGV[1] == nil or ARGV[2] == nil or ARGV[3] == nil or not quiet or quiet < 0 then
  return malformed('header')
end
local FIRST = 5 + quiet
local used = {[1] = true}
local i = FIRST
while i <= n do
  local kind, w = ARGV[i], tonumber(ARGV[i + 2])
  if not w or w < 0 or (w > 0 and KEYS[9 + w] == nil) then
    return malformed('key at argument ' .. i)
  end
  if w > 0 then
    used[6], used[7] = true, true
    i = i + 1
  end
  local keyed = kind == 'done' or kind == 'adopt'
  local r = keyed and 0 or tonumber(ARGV[i + 3])
  if not r or r < 0 or (keyed and w == 0) then
    return malformed('record at argument ' .. i)
  end
  i = i + (keyed and 3 or 4)
  if r > 0 then
    used[3] = true
    for _ = 1, r do
      local present = ARGV[i + 1]
      if present == '0' then i = i + 2
      elseif present == '1' then i = i + 3
      elseif present == '2' then i = i + 4
      else return malformed('read at argument ' .. i) end
    end
  end
  if kind == 'ok' then
    local p = tonumber(ARGV[i])
    if not p or p < 0 then return malformed('publishes at argument ' .. i) end
    i = i + 1 + p
    local l = tonumber(ARGV[i])
    if not l or l < 0 then return malformed('later publishes at argument ' .. i) end
    for j = i + 1, i + 2 * l, 2 do
      if not later_due(ARGV[j], 0) then return malformed('time at argument ' .. j) end
    end
    i = i + 1 + 2 * l
    if l > 0 then used[9] = true end
    local s = tonumber(ARGV[i])
    if not s or s < 0 then return malformed('writes at argument ' .. i) end
    i = i + 1 + 2 * s
    local d = tonumber(ARGV[i])
    if not d or d < 0 then return malformed('deletes at argument ' .. i) end
    i = i + 1 + d
    local h = tonumber(ARGV[i])
    if not h or h < 0 then return malformed('requests at argument ' .. i) end
    i = i + 1 + h
    if h > 0 then used[5] = true end
    if p > 0 then used[4] = true end
    if s + d > 0 then used[3] = true end
  elseif kind == 'dlq' then
    i = i + 1
    used[2] = true
  elseif kind == 'adopt' then
    i = i + 1
  elseif kind == 'retry' then
    if not tonumber(ARGV[i]) or not tonumber(ARGV[i + 1]) then
      return malformed('retry at argument ' .. i)
    end
    i = i + 2
    used[8] = true
  elseif kind ~= 'done' then
    return malformed('record kind at argument ' .. i)
  end
end
if i ~= n + 1 then return malformed('batch: its last record runs past the arguments') end

-- Only the keys this batch touches: a broken state hash refuses the
-- records that use it, not a dead letter.
local TYPES = {'stream', 'stream', 'hash', 'stream', 'stream', 'zset', 'zset', 'zset', 'zset'}
for k in pairs(used) do used[k] = TYPES[k] end
local refused = order_types_error(used)
if refused then return redis.error_reply(refused) end

-- Pass 2: the writes. `unpack` takes a few thousand values at most.
local CHUNK = 1000
local group = ARGV[1]
local ordered = ARGV[2] == '1'
local park = ARGV[3] == '1'
local skipped = 0
local result = {0, 0}

for from = 5, 4 + quiet, CHUNK do
  local to = math.min(from + CHUNK - 1, 4 + quiet)
  local acked = redis.call('XACK', KEYS[1], group, unpack(ARGV, from, to))
  skipped = skipped + (to - from + 1) - acked
end

-- Whether the r reads from ARGV[i] still hold; and where the record goes on.
local function holds(i, r)
  local fresh = true
  for _ = 1, r do
    local field, present = ARGV[i], ARGV[i + 1]
    if present == '1' then
      if fresh and redis.call('HGET', KEYS[3], field) ~= ARGV[i + 2] then fresh = false end
      i = i + 3
    elseif present == '2' then
      if fresh then
        local stamp = redis.call('HGET', KEYS[3], '\0stamp:' .. field) or ''
        fresh = redis.call('HSTRLEN', KEYS[3], field) == tonumber(ARGV[i + 2])
          and stamp == ARGV[i + 3]
      end
      i = i + 4
    else
      if fresh and redis.call('HEXISTS', KEYS[3], field) == 1 then fresh = false end
      i = i + 2
    end
  end
  return fresh, i
end

-- Writes ARGV[from..to] with `command` on the state hash, in chunks.
local function chunked(command, from, to)
  for c = from, to, CHUNK do
    redis.call(command, KEYS[3], unpack(ARGV, c, math.min(c + CHUNK - 1, to)))
  end
end

-- Appends ARGV[from..to], one entry each, to the stream `key`: an
-- event's publishes, or its queued requests.
local function append(key, from, to)
  for j = from, to do
    redis.call('XADD', key, '*', 'data', ARGV[j])
  end
end

local blocked = false
local now
i = FIRST
while i <= n do
  local kind, id, w = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key
  if w > 0 then
    key = ARGV[i + 3]
    i = i + 1
  end
  local fresh = true
  if kind == 'done' or kind == 'adopt' then
    i = i + 3
  else
    fresh, i = holds(i + 4, tonumber(ARGV[i + 3]))
  end
  local apply = fresh and not blocked
  if not apply then
    result[#result + 1] = id
    if ordered then blocked = true end
  end
  local acked = false
  if apply then
    acked = redis.call('XACK', KEYS[1], group, id) == 1
    if not acked then
      skipped = skipped + 1
      -- Another consumer committed it: what later events of an ordered
      -- batch read of its writes, unchecked, may not be what it wrote.
      if ordered then blocked = true end
    end
  end
  if kind == 'ok' then
    local p = tonumber(ARGV[i])
    if acked then append(KEYS[4], i + 1, i + p) end
    i = i + 1 + p
    local l = tonumber(ARGV[i])
    if acked and l > 0 then
      now = now or order_now()
      for j = i + 1, i + 2 * l, 2 do
        later_add(KEYS[9], later_due(ARGV[j], now), {id .. '/' .. j, 'data', ARGV[j + 1]})
      end
    end
    i = i + 1 + 2 * l
    local s = tonumber(ARGV[i])
    if acked and s > 0 then chunked('HSET', i + 1, i + 2 * s) end
    i = i + 1 + 2 * s
    local d = tonumber(ARGV[i])
    if acked and d > 0 then chunked('HDEL', i + 1, i + d) end
    i = i + 1 + d
    local h = tonumber(ARGV[i])
    if acked then append(KEYS[5], i + 1, i + h) end
    i = i + 1 + h
    if acked and key then
      order_release(KEYS[1], KEYS[6], KEYS[9 + w], key)
    end
  elseif kind == 'done' then
    if acked then
      order_release(KEYS[1], KEYS[6], KEYS[9 + w], key)
    end
  elseif kind == 'adopt' then
    if acked then
      local list, data = KEYS[9 + w], ARGV[i]
      local head = redis.pcall('LINDEX', list, 0)
      local letter = type(head) == 'string' and string.match(head, '^park:(.+)$')
      now = now or order_now()
      if letter then
        redis.call('LSET', list, 0, now .. ' ' .. data)
        redis.call('XADD', KEYS[1], '*', 'data', data, 'key', key)
        redis.call('ZREM', KEYS[7], key)
      else
        order_admit(KEYS[1], KEYS[6], list, key, data, now)
      end
    end
    i = i + 1
  elseif kind == 'retry' then
    if acked then
      now = now or order_now()
      later_retry(KEYS[1], KEYS[8], id, now + tonumber(ARGV[i]), ARGV[i + 1])
    end
    i = i + 2
  elseif kind == 'dlq' then
    if acked and key then
      local letter = redis.call('XADD', KEYS[2], '*', 'data', ARGV[i], 'key', key)
      if park then
        now = now or order_now()
        order_park(KEYS[7], KEYS[9 + w], key, letter, now)
      else
        order_release(KEYS[1], KEYS[6], KEYS[9 + w], key)
      end
    elseif acked then
      redis.call('XADD', KEYS[2], '*', 'data', ARGV[i])
    end
    i = i + 1
  end
end
result[1] = skipped
result[2] = blocked and 1 or 0
return result
