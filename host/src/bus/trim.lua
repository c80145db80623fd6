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

local keep = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if len <= keep then return 0 end

-- What every group still needs starts at its oldest pending entry, or else
-- right after the last entry it read.
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end -- nobody reads it: keep everything
local safe = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local bound
  if info['pending'] > 0 then
    bound = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    bound = ms .. '-' .. (seq + 1)
  end
  if safe == nil or less(bound, safe) then safe = bound end
end

-- Where the length limit would cut, estimated from the ids' timestamps
-- (finding it exactly would walk `keep` entries inside Redis). Batches are
-- written within a millisecond, so cut a millisecond early: keep more
-- rather than less.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
local first_ms = parse(first)
local last_ms = parse(last)
local cut_ms = first_ms + math.floor((last_ms - first_ms) * (len - keep) / len) - 1
if cut_ms <= first_ms then return 0 end
local cut = string.format('%d-0', cut_ms)
if less(safe, cut) then cut = safe end

return redis.call('XTRIM', KEYS[1], 'MINID', '~', cut)
