-- token_bucket.lua: limiter_core::bucket::check, transliterated for Redis. One call decides
-- one or more checks, in order; each check covers every quota of one client's policy, all or
-- nothing. The whole call is atomic, and a check sees the writes of the checks before it.
--
-- The math and its units are defined once, in crates/limiter-core/src/bucket.rs: time in
-- microseconds, counted by each quota in ticks of `tick` µs (1 for nearly every quota; a
-- divisor of the period for quotas whose exact form needs more than 2^50 units); a quota of
-- `tokens` per `period` has unit = (period / tick) / g units per token and gains
-- refill = tokens / g units per tick (g = gcd); a full bucket holds max = capacity × unit
-- units, at most 2^50, so every value here is an integer that a Lua double holds exactly.
-- A test runs this script and the Rust function on the same traces and demands equal answers,
-- TTLs included.
--
-- KEYS             the buckets of every check, check after check: check j's quota i is
--                  rl:{<hash>}:<policy>:<quota>. One check's keys share its client's hash
--                  tag, so they live on one Redis Cluster slot; a call that spans several
--                  clients is for one Redis, not a cluster.
-- ARGV             per check, checks one after the other:
--                    cost          in tokens; the caller has checked 1 <= cost <= every capacity
--                    n             the check's number of quotas, its next n KEYS
--                    unit refill max tick, n times
--
-- Stored value     "<level> <updated>": units in the bucket at `updated` µs of Redis time,
--                  which falls on a tick of the quota. A missing key is a full bucket. Every
--                  write sets a TTL (PX) equal to the time until the bucket is full again,
--                  counted from its stamp and rounded up to the millisecond, after which
--                  forgetting it loses nothing. A denied check writes nothing.
-- Time             redis.call('TIME') once per call; never a worker's clock. Time never runs
--                  backwards for a bucket: a `now` before `updated` counts as no time passed,
--                  and every wait is counted from the bucket's later stamp.
--
-- Reply, an array of five integers per check, in the order of the checks:
--   1 allowed          1 if admitted (the cost was taken from every bucket), 0 if not;
--                      -1 if the key of quota (field 2) holds something that is not a bucket:
--                      that check is an error, never a silent reset, and the others stand
--   2 quota            0-based index of the quota the next fields describe: if admitted, the
--                      one with the fewest whole tokens left (ties: the slowest to fill up);
--                      if denied, the denying quota with the longest wait (ties: the first)
--   3 remaining        whole tokens left in that bucket
--   4 reset_after_us   µs until that bucket is full again
--   5 retry_after_us   µs until this request would pass; -1 when admitted
--   (fields 3 to 5 are 0 for an error; waits are at most 2^51 µs, about 71 years)

local floor, match, format, tonumber, type = math.floor, string.match, string.format, tonumber, type
local call, try_call = redis.call, redis.pcall

-- The longest wait reported and TTL set: 2^51 µs (limiter_core::MAX_WAIT_US).
local MAX_WAIT = 2251799813685248

-- floor(a / b) and ceil(a / b) for integers a >= 0, b > 0 below 2^53, corrected for the
-- rounding of the floating-point quotient.
local function div_floor(a, b)
    local q = floor(a / b)
    if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
    return q
end

local function div_ceil(a, b)
    local q = div_floor(a, b)
    if q * b < a then q = q + 1 end
    return q
end

-- µs from `now` until tick `stamp + ticks` of a quota with `tick` µs per tick, at most
-- MAX_WAIT; 0 for no ticks (bucket.rs `until`). `stamp` is at or after now's tick.
local function wait_for(stamp, ticks, tick, now)
    if ticks == 0 then return 0 end
    local wait
    if tick == 1 then
        wait = stamp - now + ticks
    else
        wait = ticks * tick
        -- Past the cap by more than a tick, the exact value no longer matters (nor fits).
        if wait > MAX_WAIT + tick then return MAX_WAIT end
        wait = stamp * tick + wait - now
    end
    if wait > MAX_WAIT then return MAX_WAIT end
    return wait
end

-- The bucket at `key` as of `now` µs: its level (bucket::level_at) and the tick it is
-- stamped with from now on, never earlier than its stored stamp; nil if the key holds
-- something else. GET on a hash, a list or a set is an error, which would abort the whole
-- call after earlier checks of it wrote (Redis undoes nothing), so it is caught as "not a
-- bucket".
local function load(key, now, max, refill, tick)
    if tick > 1 then now = div_floor(now, tick) end
    local stored = try_call('GET', key)
    if not stored then return max, now end
    if type(stored) == 'table' then return nil end
    local l, u = match(stored, '^(%d+) (%d+)$')
    if not l then return nil end
    local level, at = tonumber(l), tonumber(u)
    if tick > 1 then at = div_floor(at, tick) end
    local elapsed = now - at
    if elapsed < 0 then elapsed = 0 end
    -- Compare elapsed time with the time to fill up.
    if elapsed >= div_ceil(max - level, refill) then
        level = max
    else
        level = level + elapsed * refill
    end
    if now > at then at = now end
    return level, at
end

-- Writes a bucket stamped at tick `at`, with a TTL of `reset` µs (its time to fill up)
-- rounded up to the millisecond.
local function store(key, level, at, tick, reset)
    call('SET', key, format('%d %d', level, at * tick), 'PX', div_ceil(reset, 1000))
end

local reply = {}

local function answer(allowed, quota, remaining, reset, retry)
    local r = #reply
    reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4], reply[r + 5] =
        allowed, quota, remaining, reset, retry
end

-- A check of one quota, the common case, without the tables of the general one.
local function decide_one(now, key, cost, unit, refill, max, tick)
    local level, at = load(key, now, max, refill, tick)
    if not level then return answer(-1, 0, 0, 0, 0) end
    local need = cost * unit
    if level >= need then
        level = level - need
        local reset = wait_for(at, div_ceil(max - level, refill), tick, now)
        store(key, level, at, tick, reset)
        answer(1, 0, div_floor(level, unit), reset, -1)
    else
        answer(0, 0, div_floor(level, unit), wait_for(at, div_ceil(max - level, refill), tick, now),
            wait_for(at, div_ceil(need - level, refill), tick, now))
    end
end

-- Decides the check whose first key is KEYS[k + 1] and first argument ARGV[a + 1].
local function decide(now, k, a)
    local cost, n = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    if n == 1 then
        return decide_one(now, KEYS[k + 1], cost, tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
            tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]))
    end
    local units, refills, maxes, ticks, levels, stamps = {}, {}, {}, {}, {}, {}
    local allowed = true

    for i = 1, n do
        local p = a + 4 * i - 1
        local unit, refill, max, tick =
            tonumber(ARGV[p]), tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
        units[i], refills[i], maxes[i], ticks[i] = unit, refill, max, tick
        local level, at = load(KEYS[k + i], now, max, refill, tick)
        if not level then return answer(-1, i - 1, 0, 0, 0) end
        levels[i], stamps[i] = level, at
        if level < cost * unit then allowed = false end
    end

    local reported = 1
    if allowed then
        local best_remaining, best_reset
        for i = 1, n do
            local level = levels[i] - cost * units[i]
            levels[i] = level
            local remaining = div_floor(level, units[i])
            local reset = wait_for(stamps[i], div_ceil(maxes[i] - level, refills[i]), ticks[i], now)
            store(KEYS[k + i], level, stamps[i], ticks[i], reset)
            if best_remaining == nil or remaining < best_remaining
                or (remaining == best_remaining and reset > best_reset) then
                reported, best_remaining, best_reset = i, remaining, reset
            end
        end
    else
        local best_wait = 0
        for i = 1, n do
            local need = cost * units[i]
            if levels[i] < need then
                local wait = wait_for(stamps[i], div_ceil(need - levels[i], refills[i]), ticks[i], now)
                if wait > best_wait then reported, best_wait = i, wait end
            end
        end
    end

    local unit, refill, level, stamp, tick =
        units[reported], refills[reported], levels[reported], stamps[reported], ticks[reported]
    local retry = -1
    if not allowed then retry = wait_for(stamp, div_ceil(cost * unit - level, refill), tick, now) end
    answer(allowed and 1 or 0, reported - 1, div_floor(level, unit),
        wait_for(stamp, div_ceil(maxes[reported] - level, refill), tick, now), retry)
end

local function server_now()
    local t = call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local now, last = server_now(), #ARGV
local k, a = 0, 0
while a < last do
    local n = tonumber(ARGV[a + 2])
    decide(now, k, a)
    k, a = k + n, a + 2 + 4 * n
end
return reply
