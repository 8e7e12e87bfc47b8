-- Roll a batch of usage events into per tenant x model x day counters and acknowledge
-- them, in one atomic step: a crash before this script leaves the events pending (read
-- again later), a crash after it leaves nothing to redo. An event whose idempotency key
-- was seen before (a duplicate from a replayed buffer) is acknowledged, not counted.
--
-- KEYS: 1 the stream. Every other key shares its hash tag (`{usage}`), so the script
-- touches one slot.
-- ARGV: 1 consumer group, 2 dedupe ttl seconds, 3 key prefix, then 11 fields per event:
--       stream id, idempotency key, tenant, day, model, prompt, completion, cached,
--       cost micros, failed (0/1), latency ms.
-- Returns the number of events counted (duplicates excluded).

local group, ttl, prefix = ARGV[1], ARGV[2], ARGV[3]
local counted = 0
for i = 4, #ARGV, 11 do
  local id, idem, tenant, day, model = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('SET', prefix .. 'seen:' .. idem, '1', 'NX', 'EX', ttl) then
    local rollup = prefix .. 'day:' .. tenant .. ':' .. day
    local m = model .. '|'
    redis.call('HINCRBY', rollup, m .. 'attempts', 1)
    redis.call('HINCRBY', rollup, m .. 'prompt_tokens', ARGV[i + 5])
    redis.call('HINCRBY', rollup, m .. 'completion_tokens', ARGV[i + 6])
    redis.call('HINCRBY', rollup, m .. 'cached_tokens', ARGV[i + 7])
    redis.call('HINCRBY', rollup, m .. 'cost_micros', ARGV[i + 8])
    redis.call('HINCRBY', rollup, m .. 'failed_attempts', ARGV[i + 9])
    redis.call('HINCRBY', rollup, m .. 'latency_ms', ARGV[i + 10])
    redis.call('SADD', prefix .. 'days:' .. tenant, day)
    counted = counted + 1
  end
  redis.call('XACK', KEYS[1], group, id)
end
return counted
