-- Settle one reservation to the real usage: replace what was reserved by what was spent in
-- the day/month counters and in the tokens window (while its second is still in it). A
-- reservation already released as expired (or never made in Redis: spend on a router's
-- local limits during an outage) counts its real usage in full. Idempotent: a settle sent
-- again (its reply lost, then retried) finds the id's settled marker and changes nothing.
--
-- KEYS: 1 tokens window, 2 day counters, 3 month counters, 4 reservations, 5 expiries,
--       6 the id's settled marker.
-- ARGV: 1 now ms, 2 reservation id, 3 tokens spent, 4 cost micros spent, 5 marker ttl ms.
-- Returns 1 when the reservation was still held, 0 when it had expired (or never was),
-- 2 when it had been settled already.

local now = tonumber(ARGV[1])
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local function int(x) return string.format('%d', x) end

if not redis.call('SET', KEYS[6], '1', 'NX', 'PX', ARGV[5]) then
  return 2
end

local held = redis.call('HGET', KEYS[4], ARGV[2])
local reserved_tokens, reserved_cost, second = 0, 0, nil
if held then
  local t, c, s = string.match(held, '^(%d+)|(%d+)|(%d+)|')
  reserved_tokens, reserved_cost, second = tonumber(t), tonumber(c), tonumber(s)
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('ZREM', KEYS[5], ARGV[2])
end
local dt, dc = tokens - reserved_tokens, cost - reserved_cost
if dt ~= 0 or dc ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'tokens', int(dt))
  redis.call('HINCRBY', KEYS[2], 'cost', int(dc))
  redis.call('HINCRBY', KEYS[3], 'tokens', int(dt))
  redis.call('HINCRBY', KEYS[3], 'cost', int(dc))
end
local current = math.floor(now / 1000)
if second == nil then second = current end
if dt ~= 0 and second > current - 60 then
  local left = redis.call('HINCRBY', KEYS[1], int(second), int(dt))
  if left <= 0 then redis.call('HDEL', KEYS[1], int(second)) end
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if held then return 1 end
return 0
