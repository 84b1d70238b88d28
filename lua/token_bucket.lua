-- token_bucket.lua: limiter_core::bucket::check, transliterated for Redis. One call checks
-- every quota of a client's policy, all or nothing, atomically.
--
-- The math and its units are defined once, in crates/limiter-core/src/bucket.rs: time in
-- microseconds; a quota of `tokens` per `period` µs has unit = period / g units per token and
-- gains refill = tokens / g units per µs (g = gcd); a full bucket holds max = capacity × unit
-- units, at most 2^50, so every value here is an integer that a Lua double holds exactly.
-- A test runs this script and the Rust function on the same traces and demands equal answers.
--
-- KEYS[i]          the bucket of quota i. All keys of one call share the client's hash tag,
--                  rl:{<hash>}:<policy>:<quota>, so they live on one Redis Cluster slot.
-- ARGV[1]          cost in tokens; the caller has checked 1 <= cost <= every capacity.
-- ARGV[3i-1], ARGV[3i], ARGV[3i+1]
--                  unit, refill and max of quota i (i = 1 .. #KEYS).
--
-- Stored value     "<level> <updated>": units in the bucket at `updated` µs of Redis time.
--                  A missing key is a full bucket. Every write sets a TTL (PX) equal to the
--                  time the bucket takes to fill up, rounded up to the millisecond, after
--                  which forgetting it loses nothing. A denied request writes nothing.
-- Errors           a key holding anything else is an error reply, never a silent reset.
-- Time             redis.call('TIME') only; never a worker's clock. Time never runs
--                  backwards for a bucket: a `now` before `updated` counts as no time passed.
--
-- Reply, an array of five integers:
--   1 allowed          1 if admitted (the cost was taken from every bucket), 0 if not
--   2 quota            0-based index of the quota the next fields describe: if admitted, the
--                      one with the fewest whole tokens left (ties: the slowest to fill up);
--                      if denied, the denying quota with the longest wait (ties: the first)
--   3 remaining        whole tokens left in that bucket
--   4 reset_after_us   µs until that bucket is full again
--   5 retry_after_us   µs until this request would pass; -1 when admitted

-- floor(a / b) and ceil(a / b) for integers a >= 0, b > 0 below 2^53, corrected for the
-- rounding of the floating-point quotient.
local function div_floor(a, b)
    local q = math.floor(a / b)
    if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
    return q
end

local function div_ceil(a, b)
    local q = div_floor(a, b)
    if q * b < a then q = q + 1 end
    return q
end

local function decide(now)
    local cost = tonumber(ARGV[1])
    local n = #KEYS
    local units, refills, maxes, levels, updated = {}, {}, {}, {}, {}
    local allowed = true

    for i = 1, n do
        local unit, refill, max = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
        units[i], refills[i], maxes[i] = unit, refill, max
        local level, at = max, now
        local stored = redis.call('GET', KEYS[i])
        if stored then
            local l, u = string.match(stored, '^(%d+) (%d+)$')
            if not l then
                return redis.error_reply('ERR limiter: ' .. KEYS[i] .. ' does not hold a bucket')
            end
            do
                level, at = tonumber(l), tonumber(u)
                -- level_at(now): compare elapsed time with the time to fill up.
                local elapsed = now - at
                if elapsed < 0 then elapsed = 0 end
                local missing = max - level
                if elapsed >= div_ceil(missing, refill) then
                    level = max
                else
                    level = level + elapsed * refill
                end
                if now > at then at = now end
            end
        end
        levels[i], updated[i] = level, at
        if level < cost * unit then allowed = false end
    end

    local reported = 1
    if allowed then
        local best_remaining, best_reset
        for i = 1, n do
            local level = levels[i] - cost * units[i]
            levels[i] = level
            local missing = maxes[i] - level
            local ttl_ms = div_ceil(div_ceil(missing, refills[i]), 1000)
            redis.call('SET', KEYS[i], string.format('%d %d', level, updated[i]), 'PX', ttl_ms)
            if n > 1 then
                local remaining = div_floor(level, units[i])
                local reset = div_ceil(missing, refills[i])
                if best_remaining == nil or remaining < best_remaining
                    or (remaining == best_remaining and reset > best_reset) then
                    reported, best_remaining, best_reset = i, remaining, reset
                end
            end
        end
    else
        local best_wait = 0
        for i = 1, n do
            local need = cost * units[i]
            if levels[i] < need then
                local wait = div_ceil(need - levels[i], refills[i])
                if wait > best_wait then reported, best_wait = i, wait end
            end
        end
    end

    local unit, refill, level = units[reported], refills[reported], levels[reported]
    local retry = -1
    if not allowed then retry = div_ceil(cost * unit - level, refill) end
    return {
        allowed and 1 or 0,
        reported - 1,
        div_floor(level, unit),
        div_ceil(maxes[reported] - level, refill),
        retry,
    }
end

local function server_now()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

return decide(server_now())
