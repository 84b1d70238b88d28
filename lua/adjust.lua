-- adjust.lua: the Redis half of limiter_core::bucket::peek and bucket::refund, for one
-- client's buckets under one policy, all or nothing. A sibling of token_bucket.lua, which
-- stays tuned for checks alone: the buckets, their keys, their stored value and the expiry
-- rule are that script's (its header defines them), and so are the units and the exactness
-- argument (crates/limiter-core/src/bucket.rs defines the math). This script only
-- measures, and for a refund stores; the worker turns its reply into the outcome with the
-- core's own code (bucket::outcome_of for a peek, bucket::refund_outcome_of for a refund).
-- A test runs the same trace of checks, peeks and refunds here and in the memory backend
-- and demands the same decisions.
--
-- KEYS    the client's buckets, one per quota of its policy, in order:
--         rl:{<hash>}:<policy>:<quota>:v2, all under the client's hash tag, so they live
--         on one Redis Cluster slot
-- ARGV    mode       'peek': what a check of `tokens` would answer now, writing nothing;
--                    'refund': give `tokens` back to every bucket, each capped at full
--         tokens     the cost to peek at, or the tokens to give back; the caller has
--                    checked 1 <= tokens <= every capacity of the policy
--         per quota  unit refill max tick, one quota after the other, as many as KEYS
--
-- Stored value   as token_bucket.lua's: 24 bytes, struct.pack('<ddd', level, updated,
--                expires). A missing key is a full bucket.
-- Peek           writes nothing.
-- Refund         raises each stored bucket's level, as of now, by tokens × unit, at most to
--                max, stamped at the later of now's tick and its own (a stamp never moves
--                back), and writes it with token_bucket.lua's expiry rule: KEEPTTL while the
--                key's expiry comes at or after the bucket is full again (a refund only
--                brings that moment closer, so nearly always), else PXAT. A missing key is
--                full and stays missing: nothing is written for it.
-- Time           redis.call('TIME') once per call; never a worker's clock.
--
-- Reply   an array of integers, in the format of one check of token_bucket.lua: Redis's
--         `now` in µs, then
--           code             peek: 1 the check would be admitted, 0 denied;
--                            refund: 1;
--                            -i if quota i's key holds something that is not a bucket:
--                            then nothing was written
--           level, offset    per quota: its units (peek: after the cost if it would be
--                            admitted, as a check would have taken it; refund: after the
--                            refund) and its stamp in ticks minus now's tick (0 unless time
--                            stepped back); both 0 for an error

local floor, pack, unpack = math.floor, struct.pack, struct.unpack
local call, try_call = redis.call, redis.pcall

-- The longest wait counted: 2^51 µs (limiter_core::MAX_WAIT_US).
local MAX_WAIT = 2251799813685248

local mode = ARGV[1]
if mode ~= 'peek' and mode ~= 'refund' then
    return redis.error_reply('ERR adjust.lua: mode must be peek or refund, not ' .. tostring(mode))
end
local refund = mode == 'refund'
local tokens = ARGV[2] + 0

local time = call('TIME')
local now = time[1] * 1000000 + time[2]
local n = #KEYS

-- Bucket `key` as of now, as token_bucket.lua's load(): its level, its stamp in ticks (the
-- later of now's and the stored one), the key's expiry in ms and whether the key exists;
-- nil if the key holds something that is not a bucket (GET on another type is caught).
local function load(key, refill, max, tick, ticks)
    local stored = try_call('GET', key)
    if not stored then return max, ticks, 0, false end
    if #stored ~= 24 then return nil end
    local level, at, expires = unpack('<ddd', stored)
    if not (level >= 0 and level <= max and at >= 0 and expires >= 0) then return nil end
    at = at / tick
    if ticks > at then
        -- An overflowing product is still at least what is missing.
        local gained = (ticks - at) * refill
        if gained < max - level then return level + gained, ticks, expires, true end
        return max, ticks, expires, true
    end
    return level, at, expires, true
end

-- Writes bucket `key`, as token_bucket.lua's store(): its expiry rule, to the letter.
local function store(key, refill, max, tick, level, stamp, expires)
    local missing = (max - level) / refill
    if missing % 1 ~= 0 then missing = missing - missing % 1 + 1 end
    local full = (stamp + missing) * tick
    if full > now + MAX_WAIT then full = now + MAX_WAIT end
    if expires * 1000 >= full then
        call('SET', key, pack('<ddd', level, stamp * tick, expires), 'KEEPTTL')
    else
        expires = (full + full - now) / 1000
        if expires % 1 ~= 0 then expires = expires - expires % 1 + 1 end
        call('SET', key, pack('<ddd', level, stamp * tick, expires), 'PXAT', expires)
    end
end

-- Every bucket is measured before anything is written: a key that is not a bucket fails
-- the whole call, leaving every bucket as it was.
local reply = { now, 1 }
local need, levels, stamps, expiries, found, ticks = {}, {}, {}, {}, {}, {}
for i = 1, n do
    local a = 3 + 4 * (i - 1)
    local refill, max, tick = ARGV[a + 1] + 0, ARGV[a + 2] + 0, ARGV[a + 3] + 0
    need[i] = tokens * (ARGV[a] + 0)
    ticks[i] = floor(now / tick)
    levels[i], stamps[i], expiries[i], found[i] = load(KEYS[i], refill, max, tick, ticks[i])
    if not levels[i] then
        reply[2] = -i
        for j = 1, n do reply[1 + 2 * j], reply[2 + 2 * j] = 0, 0 end
        return reply
    end
    if not refund and levels[i] < need[i] then reply[2] = 0 end
end

for i = 1, n do
    local level = levels[i]
    if refund then
        local a = 3 + 4 * (i - 1)
        local refill, max, tick = ARGV[a + 1] + 0, ARGV[a + 2] + 0, ARGV[a + 3] + 0
        level = level + need[i]
        if level > max then level = max end
        -- A missing key is full, and a full bucket is what a missing key means.
        if found[i] then store(KEYS[i], refill, max, tick, level, stamps[i], expiries[i]) end
    elseif reply[2] == 1 then
        level = level - need[i]
    end
    reply[1 + 2 * i], reply[2 + 2 * i] = level, stamps[i] - ticks[i]
end
return reply
