-- Admission for one request of one tenant, atomically: release expired reservations, check
-- the sliding-window RPM and TPM and the day/month token quotas and budgets, and on success
-- count the request and reserve its estimated tokens and cost. One round trip.
--
-- KEYS: 1 requests window (hash second -> count), 2 tokens window (hash second -> tokens),
--       3 day counters (hash tokens, cost), 4 month counters, 5 reservations (hash id ->
--       "tokens|cost|second|daykey|monthkey"), 6 reservation expiries (zset id -> ms).
--       All carry the tenant's hash tag, so they share a slot; the expired reservations'
--       day/month keys (recorded in the reservation) do too.
-- ARGV: 1 now ms, 2 reservation id, 3 tokens, 4 cost micros, 5 rpm, 6 tpm, 7 day tokens,
--       8 month tokens, 9 day budget, 10 month budget (limits: -1 = none), 11 ttl ms,
--       12 day end ms, 13 month end ms.
-- Returns {verdict, retry ms, requests remaining, requests reset ms, tokens remaining,
--          tokens reset ms}; verdict 0 admitted, 1 rpm, 2 tpm, 3 day tokens, 4 month tokens,
--          5 day budget, 6 month budget.

local function int(x) return string.format('%d', x) end

local now = tonumber(ARGV[1])
local tokens = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local rpm, tpm = tonumber(ARGV[5]), tonumber(ARGV[6])
local day_tokens, month_tokens = tonumber(ARGV[7]), tonumber(ARGV[8])
local day_budget, month_budget = tonumber(ARGV[9]), tonumber(ARGV[10])
local WINDOW = 60
local second = math.floor(now / 1000)

-- Reservations whose router never settled them (it crashed): give back what they held.
local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 32)
for _, id in ipairs(expired) do
  local held = redis.call('HGET', KEYS[5], id)
  if held then
    local t, c, _, dkey, mkey = string.match(held, '^(%d+)|(%d+)|(%d+)|([^|]+)|([^|]+)$')
    redis.call('HINCRBY', dkey, 'tokens', int(-tonumber(t)))
    redis.call('HINCRBY', dkey, 'cost', int(-tonumber(c)))
    redis.call('HINCRBY', mkey, 'tokens', int(-tonumber(t)))
    redis.call('HINCRBY', mkey, 'cost', int(-tonumber(c)))
    redis.call('HDEL', KEYS[5], id)
  end
  redis.call('ZREM', KEYS[6], id)
end

-- A sliding window of one-second buckets: drop the ones that left it, sum the rest, and
-- say when the oldest leaves (the earliest anything frees up).
local function window(key)
  local flat = redis.call('HGETALL', key)
  local total, buckets = 0, {}
  for i = 1, #flat, 2 do
    local s, n = tonumber(flat[i]), tonumber(flat[i + 1])
    if s <= second - WINDOW then
      redis.call('HDEL', key, flat[i])
    else
      total = total + n
      buckets[#buckets + 1] = {s, n}
    end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return total, buckets
end

-- When `need` more fits under `limit`: the time the buckets holding the excess leave.
local function wait_ms(total, buckets, need, limit)
  local freed = 0
  for _, b in ipairs(buckets) do
    freed = freed + b[2]
    if total - freed + need <= limit then
      return math.max((b[1] + WINDOW) * 1000 - now, 1)
    end
  end
  return WINDOW * 1000
end

local function oldest_leaves(buckets)
  if #buckets == 0 then return 0 end
  return math.max((buckets[1][1] + WINDOW) * 1000 - now, 0)
end

local requests, request_buckets = window(KEYS[1])
local spent, token_buckets = window(KEYS[2])
local req_left = rpm >= 0 and math.max(rpm - requests, 0) or -1
local tok_left = tpm >= 0 and math.max(tpm - spent, 0) or -1
local req_reset, tok_reset = oldest_leaves(request_buckets), oldest_leaves(token_buckets)

local function refuse(verdict, retry)
  return {verdict, int(retry), int(req_left), int(req_reset), int(tok_left), int(tok_reset)}
end

if rpm >= 0 and requests + 1 > rpm then
  return refuse(1, wait_ms(requests, request_buckets, 1, rpm))
end
if tpm >= 0 and spent + tokens > tpm then
  return refuse(2, wait_ms(spent, token_buckets, tokens, tpm))
end
local day = redis.call('HMGET', KEYS[3], 'tokens', 'cost')
local month = redis.call('HMGET', KEYS[4], 'tokens', 'cost')
local day_end, month_end = tonumber(ARGV[12]), tonumber(ARGV[13])
if day_tokens >= 0 and (tonumber(day[1]) or 0) + tokens > day_tokens then
  return refuse(3, day_end - now)
end
if month_tokens >= 0 and (tonumber(month[1]) or 0) + tokens > month_tokens then
  return refuse(4, month_end - now)
end
if day_budget >= 0 and (tonumber(day[2]) or 0) + cost > day_budget then
  return refuse(5, day_end - now)
end
if month_budget >= 0 and (tonumber(month[2]) or 0) + cost > month_budget then
  return refuse(6, month_end - now)
end

redis.call('HINCRBY', KEYS[1], int(second), 1)
redis.call('PEXPIRE', KEYS[1], (WINDOW + 1) * 1000)
redis.call('HINCRBY', KEYS[2], int(second), int(tokens))
redis.call('PEXPIRE', KEYS[2], (WINDOW + 1) * 1000)
redis.call('HINCRBY', KEYS[3], 'tokens', int(tokens))
redis.call('HINCRBY', KEYS[3], 'cost', int(cost))
redis.call('PEXPIREAT', KEYS[3], int(day_end + 86400000))
redis.call('HINCRBY', KEYS[4], 'tokens', int(tokens))
redis.call('HINCRBY', KEYS[4], 'cost', int(cost))
redis.call('PEXPIREAT', KEYS[4], int(month_end + 86400000))
local ttl = tonumber(ARGV[11])
redis.call('HSET', KEYS[5], ARGV[2],
  int(tokens) .. '|' .. int(cost) .. '|' .. int(second) .. '|' .. KEYS[3] .. '|' .. KEYS[4])
redis.call('ZADD', KEYS[6], int(now + ttl), ARGV[2])
redis.call('PEXPIRE', KEYS[5], int(ttl * 2))
redis.call('PEXPIRE', KEYS[6], int(ttl * 2))
if req_left > 0 then req_left = req_left - 1 end
if tok_left >= 0 then tok_left = math.max(tok_left - tokens, 0) end
if req_reset == 0 then req_reset = WINDOW * 1000 end
if tok_reset == 0 then tok_reset = WINDOW * 1000 end
return {0, 0, int(req_left), int(req_reset), int(tok_left), int(tok_reset)}
