-- token_bucket.lua: the Redis half of limiter_core::bucket::check. One call decides one or
-- more checks, in order; each check covers every quota of one client's policy, all or
-- nothing. The whole call is atomic, and a check sees the writes of the checks before it.
--
-- The math and its units are defined once, in crates/limiter-core/src/bucket.rs: time in
-- microseconds, counted by each quota in ticks of `tick` µs (1 for nearly every quota; a
-- divisor of the period for quotas whose exact form needs more than 2^50 units); a quota of
-- `tokens` per `period` has unit = (period / tick) / g units per token and gains
-- refill = tokens / g units per tick (g = gcd); a full bucket holds max = capacity × unit
-- units, at most 2^50, so every value here is an integer that a Lua double holds exactly,
-- and a quotient a / b of such integers (a below 2^53) rounds to the right side of every
-- integer, so flooring or ceiling it is exact. This script only measures, takes and
-- stores; the worker turns what it replies into the decision's figures with the core's
-- own code (bucket::outcome_of). A test runs this script and the core on the same traces
-- and demands equal decisions, stored buckets and expiries.
--
-- Redis's CPU per decision is the limiter's cost at scale, so the common case is written for
-- it (instruction counts per step under callgrind, docs/performance.md): arguments become
-- numbers by arithmetic (`x + 0`) or by comparing with '1', not by tonumber(), a C call;
-- the stored value is packed, not formatted and parsed; a write keeps the key's expiry
-- unless it must move (setting one costs more than the rest of the write); and a call of
-- one policy of one quota, a single check's and most batches', runs inline, without the
-- tables and closures (each costs about as much as a GET) of the general case.
--
-- KEYS    the buckets of every check, check after check: check j's quota i is
--         rl:{<hash>}:<policy>:<quota>:v2. One check's keys share its client's hash tag, so
--         they live on one Redis Cluster slot; a call that spans several clients is for one
--         Redis, not a cluster.
-- ARGV    the policies of the call, then its checks:
--           P                  the number of policies
--           per policy:        n (its quotas), then unit refill max tick, n times
--           per check:         policy (1-based), cost in tokens; the caller has checked
--                              1 <= cost <= every capacity of that policy, and that a
--                              check's keys are the next n KEYS
--
-- Stored value   24 bytes, struct.pack('<ddd', level, updated, expires): three little-endian
--                doubles, each an integer: units in the bucket at `updated` µs of Redis time
--                (on a tick of the quota), and the key's expiry in ms of Redis time. A
--                missing key is a full bucket. A denied check writes nothing.
-- Expiry         a key outlives the time its bucket is full again, after which forgetting it
--                loses nothing. A write keeps the key's expiry (SET … KEEPTTL) while it comes
--                at or after `full`, the µs the bucket is full again (from its stamp, at most
--                2^51 µs from now); else it sets it to ceil((2 × full − now) / 1000) ms
--                (PXAT), twice the time to full from now: so most writes of a busy bucket
--                keep their expiry, which costs Redis far less than setting one.
-- Time           redis.call('TIME') once per call; never a worker's clock. Time never runs
--                backwards for a bucket: a `now` before `updated` counts as no time passed,
--                and the bucket keeps its later stamp.
--
-- Reply   an array of integers: Redis's `now` in µs, then per check, in order:
--           code               1 admitted (the cost was taken from every bucket), 0 denied;
--                              -i if quota i's key holds something that is not a bucket:
--                              that check is an error, never a silent reset, and the
--                              others stand
--           level, offset      per quota: its units, after the cost if admitted, and its
--                              stamp in ticks minus now's tick (0 unless time stepped back);
--                              both 0 for an error

local floor, pack, unpack = math.floor, struct.pack, struct.unpack
local call, try_call = redis.call, redis.pcall

-- The longest wait counted: 2^51 µs (limiter_core::MAX_WAIT_US).
local MAX_WAIT = 2251799813685248

local time = call('TIME')
local now, last = time[1] * 1000000 + time[2], #ARGV
local reply, r = { now }, 1

-- A check's cost is nearly always 1, which a string comparison finds (Lua's strings are
-- interned: equal strings compare by address) without converting the argument.

if ARGV[1] == '1' and ARGV[2] == '1' then
    -- One policy of one quota: a single check's call, and most batches'. Inline: no
    -- table, no function (Lua creates every closure on every call); the general case below
    -- does the same with load() and store(), and the agreement test runs both.
    local unit, refill, max, tick = ARGV[3] + 0, ARGV[4] + 0, ARGV[5] + 0, ARGV[6] + 0
    local ticks = floor(now / tick)
    local k = 0
    for a = 7, last, 2 do
        k = k + 1
        local key = KEYS[k]
        local cost = ARGV[a + 1]
        if cost == '1' then cost = 1 else cost = cost + 0 end
        -- Load (see load() below).
        local level, stamp, expires = max, ticks, 0
        local stored = try_call('GET', key)
        if stored then
            if #stored == 24 then
                local at
                level, at, expires = unpack('<ddd', stored)
                if not (level >= 0 and level <= max and at >= 0 and expires >= 0) then
                    level = nil
                else
                    at = at / tick
                    if ticks > at then
                        local gained = (ticks - at) * refill
                        if gained < max - level then level = level + gained else level = max end
                    else
                        stamp = at
                    end
                end
            else
                level = nil
            end
        end
        if not level then
            reply[r + 1], reply[r + 2], reply[r + 3] = -1, 0, 0
        else
            local need = cost * unit
            if level >= need then
                level = level - need
                -- Store (see store() below).
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
                reply[r + 1] = 1
            else
                reply[r + 1] = 0
            end
            reply[r + 2], reply[r + 3] = level, stamp - ticks
        end
        r = r + 3
    end
else
    -- Any policies.
    local function cost_of(arg)
        if arg == '1' then return 1 end
        return arg + 0
    end

    -- Bucket `key` of a quota (unit, refill, max, tick; `ticks` is now in its ticks), as of
    -- now: its level, its stamp in ticks (the later of now's and the stored one) and the key's
    -- expiry in ms (0 for a missing key); nil if the key holds something that is not a bucket.
    -- GET on a hash, a list or a set is an error, which would abort the whole call after
    -- earlier checks of it wrote (Redis undoes nothing), so it is caught (its error reply is a
    -- table, of length 0).
    local function load(key, refill, max, tick, ticks)
        local stored = try_call('GET', key)
        if not stored then return max, ticks, 0 end
        if #stored ~= 24 then return nil end
        local level, at, expires = unpack('<ddd', stored)
        -- Written by this script, each is an integer in range; anything else is not a bucket.
        if not (level >= 0 and level <= max and at >= 0 and expires >= 0) then return nil end
        at = at / tick
        if ticks > at then
            -- An overflowing product is still at least what is missing.
            local gained = (ticks - at) * refill
            if gained < max - level then return level + gained, ticks, expires end
            return max, ticks, expires
        end
        return level, at, expires
    end

    -- Writes bucket `key` of a quota (see Expiry above).
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

    -- The quotas of a call of several policies (or of a policy of several quotas), numbered
    -- through the call: quota q has UNIT[q], REFILL[q], MAX[q], TICK[q], and TICKS[q] is now
    -- in its ticks. Filled by decide_policies only: a table costs Redis as much as a GET.
    local UNIT, REFILL, MAX, TICK, TICKS

    -- A check of quota q alone, its key KEYS[k + 1].
    local function decide_one(k, cost, q)
        local key, ticks = KEYS[k + 1], TICKS[q]
        local level, stamp, expires = load(key, REFILL[q], MAX[q], TICK[q], ticks)
        if not level then
            reply[r + 1], reply[r + 2], reply[r + 3] = -1, 0, 0
        else
            local need = cost * UNIT[q]
            if level >= need then
                level = level - need
                store(key, REFILL[q], MAX[q], TICK[q], level, stamp, expires)
                reply[r + 1] = 1
            else
                reply[r + 1] = 0
            end
            reply[r + 2], reply[r + 3] = level, stamp - ticks
        end
        r = r + 3
    end

    -- A check of quotas first to first + n - 1, its keys from KEYS[k + 1]: all or nothing.
    local function decide(k, cost, first, n)
        local levels, stamps, expiries = {}, {}, {}
        local code = 1
        for i = 1, n do
            local q = first + i - 1
            local level, stamp, expires = load(KEYS[k + i], REFILL[q], MAX[q], TICK[q], TICKS[q])
            if not level then
                code = -i
                break
            end
            levels[i], stamps[i], expiries[i] = level, stamp, expires
            if level < cost * UNIT[q] then code = 0 end
        end
        reply[r + 1] = code
        for i = 1, n do
            local q = first + i - 1
            if code < 0 then
                reply[r + 2 * i], reply[r + 2 * i + 1] = 0, 0
            else
                if code == 1 then
                    levels[i] = levels[i] - cost * UNIT[q]
                    store(KEYS[k + i], REFILL[q], MAX[q], TICK[q], levels[i], stamps[i],
                        expiries[i])
                end
                reply[r + 2 * i], reply[r + 2 * i + 1] = levels[i], stamps[i] - TICKS[q]
            end
        end
        r = r + 1 + 2 * n
    end

    -- Policy p's quotas are FIRST[p] to FIRST[p] + COUNT[p] - 1.
    do
        UNIT, REFILL, MAX, TICK, TICKS = {}, {}, {}, {}, {}
        local FIRST, COUNT = {}, {}
        local a, k, q = 2, 0, 0
        for p = 1, ARGV[1] + 0 do
            local n = ARGV[a] + 0
            FIRST[p], COUNT[p], a = q + 1, n, a + 1
            for _ = 1, n do
                q = q + 1
                local tick = ARGV[a + 3] + 0
                UNIT[q], REFILL[q], MAX[q], TICK[q] =
                    ARGV[a] + 0, ARGV[a + 1] + 0, ARGV[a + 2] + 0, tick
                TICKS[q] = floor(now / tick)
                a = a + 4
            end
        end
        while a < last do
            local p = ARGV[a] + 0
            local n = COUNT[p]
            if n == 1 then
                decide_one(k, cost_of(ARGV[a + 1]), FIRST[p])
            else
                decide(k, cost_of(ARGV[a + 1]), FIRST[p], n)
            end
            a, k = a + 2, k + n
        end
    end
end
return reply
