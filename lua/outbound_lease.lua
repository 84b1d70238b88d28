-- outbound_lease.lua: takes one in-flight lease for an outbound request, under a host's cap
-- and the cap on all hosts, both or neither; leases expire by themselves, so a worker that
-- dies holding some loses them to nobody for longer than their time to live.
--
-- KEYS    1: the host's leases, 2: every host's leases; sorted sets of lease id → expiry
--         (ms of Redis time), both under the hash tag {outbound-leases} (one cluster slot)
-- ARGV    1: the lease id, 2: its time to live in ms, 3: the host's cap, 4: the cap on all
--         hosts (0: no cap; that set is not touched)
-- Reply   {1, expiry ms} when taken; {0, ms until the earliest lease of a full set expires}
--         when a cap is reached (a release may come sooner: callers poll)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local caps = { tonumber(ARGV[3]), tonumber(ARGV[4]) }
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('ZCARD', KEYS[i]) >= caps[i] then
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      return { 0, math.max(1, tonumber(first[2]) - now) }
    end
  end
end
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], ttl * 2)
  end
end
return { 1, now + ttl }
