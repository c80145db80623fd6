#!lua flags=no-writes
-- A page of a DLQ for its list: each entry's id, its size and the two
-- ends of its `data`, never a whole payload, within a byte budget.
--
-- KEYS[1] the DLQ
-- ARGV[1] where to start (an id, `(id` to start after it, or `-`)
-- ARGV[2] the last id to read; empty: the DLQ's last entry now (so a
--         walk never reaches what was added after it started)
-- ARGV[3] most entries
-- ARGV[4] bytes the reply may hold (ids, heads and tails), about
-- ARGV[5] bytes of the head     ARGV[6] bytes of the tail
--
-- Entries are read one at a time (XRANGE COUNT 1), so Lua holds one
-- entry at a time however big a page of them would be, and the reply
-- stops once it holds the budget: a page costs the host that much
-- whatever producers wrote. `data` no longer than head and tail together
-- is sent whole as the head.
--
-- Returns {budget_spent, last id, id, entry bytes, data bytes (-1: no
-- `data`), head, tail, ...}; budget_spent is 1 when the budget ended the
-- page; last id is ARGV[2], or the last entry's ('' if the DLQ is empty).

local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'stream' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. t .. ', not a stream')
end

local from, last = ARGV[1], ARGV[2]
if last == '' then
  -- Only its id leaves Redis, not the entry.
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #newest == 0 then
    return {0, ''}
  end
  last = newest[1][1]
end
local count, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local head_bytes, tail_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local out, spent = {0, last}, 0
for _ = 1, count do
  local found = redis.call('XRANGE', KEYS[1], from, last, 'COUNT', 1)
  if #found == 0 then break end
  local id, fields = found[1][1], found[1][2]
  local bytes, data = 0, nil
  for i = 1, #fields, 2 do
    bytes = bytes + #fields[i] + #fields[i + 1]
    if data == nil and fields[i] == 'data' then data = fields[i + 1] end
  end
  local len, head, tail = -1, '', ''
  if data ~= nil then
    len = #data
    if len <= head_bytes + tail_bytes then
      head = data
    else
      head = string.sub(data, 1, head_bytes)
      tail = string.sub(data, len - tail_bytes + 1)
    end
  elseif #fields >= 2 then
    -- No `data`: the first field stands for it.
    head = string.sub(fields[1], 1, head_bytes) .. '=' .. string.sub(fields[2], 1, head_bytes)
  end
  out[#out + 1] = id
  out[#out + 1] = bytes
  out[#out + 1] = len
  out[#out + 1] = head
  out[#out + 1] = tail
  found, fields, data = nil, nil, nil
  spent = spent + #id + #head + #tail
  from = '(' .. id
  if spent >= budget then
    out[1] = 1
    break
  end
end
return out
