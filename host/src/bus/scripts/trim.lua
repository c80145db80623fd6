-- Trims a stream to about ARGV[1] entries, never past an entry that some
-- consumer group has not acknowledged or not read yet.
--
-- KEYS[1] the stream   ARGV[1] entries to keep (approximately)
-- Returns the number of entries removed.

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

-- XTRIM's `~` stops after 10,000 entries unless given `LIMIT 0`: a busy
-- stream would outgrow its trims.
-- Walking entries costs about 3 us each inside Redis: walk only the few
-- between a group's oldest pending entry and the last one it read.
local WALK = 1000

local keep = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if len <= keep then return 0 end

-- For every group: the oldest entry it still needs (its oldest pending one,
-- or else the one after the last it read), and how many entries there are
-- from there to the end, when Redis can say (`lag`, Redis 7) or a short
-- walk can count them.
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end -- nobody reads it: keep everything
local safe = nil
local needed = 0 -- the most entries any group still needs; nil if unknown
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local read = info['last-delivered-id']
  local unread = info['lag']
  if type(unread) ~= 'number' then needed = nil end
  local bound
  if info['pending'] > 0 then
    bound = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if needed then
      local span = #redis.call('XRANGE', KEYS[1], bound, read, 'COUNT', WALK + 1)
      if span > WALK then needed = nil else unread = unread + span end
    end
  else
    local ms, seq = parse(read)
    bound = ms .. '-' .. (seq + 1)
  end
  if needed and unread > needed then needed = unread end
  if safe == nil or less(bound, safe) then safe = bound end
end

-- Exactly (to a radix-tree node): every entry a group needs is among the
-- newest `keep`, so cutting to `keep` is safe; or some are older, so cut
-- just before them.
if needed then
  if needed <= keep then
    return redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', keep, 'LIMIT', 0)
  end
  return redis.call('XTRIM', KEYS[1], 'MINID', '~', safe, 'LIMIT', 0)
end

-- Otherwise (a group without a known lag, or one holding an entry far
-- back) estimate where the length limit would cut from the ids'
-- timestamps. Batches are written within a millisecond, so cut a
-- millisecond early: keep more rather than less.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
local first_ms = parse(first)
local last_ms = parse(last)
local cut_ms = first_ms + math.floor((last_ms - first_ms) * (len - keep) / len) - 1
if cut_ms <= first_ms then return 0 end
local cut = string.format('%d-0', cut_ms)
if less(safe, cut) then cut = safe end

return redis.call('XTRIM', KEYS[1], 'MINID', '~', cut, 'LIMIT', 0)
