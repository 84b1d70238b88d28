//! The Lua script and the core math agree: the same trace of (time, checks) gives the same
//! decisions in Redis and in `limiter_core::bucket`, a call of several checks deciding them
//! in order, each seeing the writes of the ones before it, and every key written with
//! exactly the TTL the core computes.
//!
//! Redis decides with its own `TIME`, which a test cannot steer, so this test runs the
//! script with three lines changed: `now` comes from the last argument instead of `TIME`;
//! `call` records the `PX` of every `SET` and writes the bucket without it (the trace runs on
//! its own clock, so a key must not expire in real time between two steps); and the reply
//! carries the recorded `PX`s after the decisions. Everything else, the whole of the math and
//! of the TTL arithmetic, is the production script. `key_hygiene.rs` checks real `PTTL`s.
//!
//! Quotas span every limit and burst from 1 to 10^9 and periods from 1 ms to 7 days, with
//! cases at the edge of the exact representation (ticks of 1 µs on one side, coarser on the
//! other); time sometimes steps back, as after a failover to a replica whose clock is behind.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::time::Duration;

use limiter_core::bucket::{self, BucketState};
use limiter_core::{ClientKeyHasher, MAX_LEVEL, Policy, Quota};
use limiter_redis::redis::{self, Script};
use limiter_redis::{RedisLimiter, SCRIPT};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const PRODUCTION_TIME: &str = "local now, last = server_now(), #ARGV";
const TRACE_TIME: &str = "local now, last = tonumber(ARGV[#ARGV]), #ARGV - 1";
const PRODUCTION_CALL: &str = "local call, try_call = redis.call, redis.pcall";
const TRACE_CALL: &str = "local ttls = {}
local function call(...)
    local args = {...}
    if args[1] == 'SET' then
        ttls[#ttls + 1] = args[5]
        return redis.call('SET', args[2], args[3])
    end
    return redis.call(...)
end
local try_call = redis.pcall";
const PRODUCTION_RETURN: &str = "\nreturn reply\n";
const TRACE_RETURN: &str = "
for i = 1, #ttls do reply[#reply + 1] = ttls[i] end
return reply
";

/// Clients in a case: a batch may hold several checks of one client, or of different ones.
const CLIENTS: usize = 3;
const WEEK_US: u64 = 7 * 86_400 * 1_000_000;
const BILLION: u64 = 1_000_000_000;

fn quota(tokens: u64, period_us: u64, burst: Option<u64>) -> Option<Quota> {
    let q = Quota::new(tokens, Duration::from_micros(period_us)).ok()?;
    match burst {
        Some(b) => q.allow_burst(b).ok(),
        None => Some(q),
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn quotas() -> impl Strategy<Value = Quota> {
    // Periods in whole milliseconds, as configs write them, or any microsecond.
    let period = prop_oneof![
        (1u64..=WEEK_US / 1_000).prop_map(|ms| ms * 1_000),
        1_000u64..=WEEK_US,
    ];
    prop_oneof![
        // Small quotas whose buckets the trace drains and refills many times.
        (
            1u64..=500,
            1u64..=90_000_000,
            proptest::option::of(1u64..=600)
        )
            .prop_filter_map("valid", |(t, p, b)| quota(t, p, b)),
        // The whole range users may write.
        (1u64..=BILLION, period, proptest::option::of(1u64..=BILLION))
            .prop_filter_map("valid", |(t, p, b)| quota(t, p, b)),
        // A burst at the edge of the exact form: one side exact, the other in ticks.
        (1u64..=1_000_000, 1_000u64..=WEEK_US, -1i64..=1).prop_filter_map(
            "valid",
            |(t, p, side)| {
                let unit = p / gcd(t, p);
                let edge = (MAX_LEVEL / unit).checked_add_signed(side)?;
                quota(t, p, Some(edge.clamp(1, BILLION)))
            }
        ),
    ]
}

/// Quotas, and steps: a time step in µs (sometimes back), then one script call of 1 to 4
/// checks (client, cost) at that instant.
type Steps = Vec<(i64, Vec<(usize, u64)>)>;

fn case() -> impl Strategy<Value = (Vec<Quota>, Steps)> {
    let cost = prop_oneof![4 => 1u64..=600, 1 => 1u64..=BILLION];
    let batch = proptest::collection::vec((0..CLIENTS, cost), 1..=4);
    let step = prop_oneof![
        2 => Just(0i64),
        3 => 0i64..=5_000,
        3 => 0i64..=100_000_000,
        1 => 0i64..=WEEK_US as i64,
        1 => -100_000_000i64..0,
    ];
    let steps = proptest::collection::vec((step, batch), 1..40);
    (proptest::collection::vec(quotas(), 1..=3), steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_and_core_math_make_the_same_decisions_and_ttls() {
    for (production, count) in [
        (PRODUCTION_TIME, SCRIPT.matches(PRODUCTION_TIME).count()),
        (PRODUCTION_CALL, SCRIPT.matches(PRODUCTION_CALL).count()),
        (PRODUCTION_RETURN, SCRIPT.matches(PRODUCTION_RETURN).count()),
    ] {
        assert_eq!(
            count, 1,
            "the script changed where the trace hooks in: {production}"
        );
    }
    let traced = SCRIPT
        .replace(PRODUCTION_TIME, TRACE_TIME)
        .replace(PRODUCTION_CALL, TRACE_CALL)
        .replace(PRODUCTION_RETURN, TRACE_RETURN);
    let traced = Script::new(&traced);
    let redis = support::TestRedis::start().await;
    let mut conn = redis.raw().await;
    let sha = traced.prepare_invoke().load_async(&mut conn).await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let run = |conn: &mut redis::aio::MultiplexedConnection, cmd: &redis::Cmd| -> redis::Value {
        tokio::task::block_in_place(|| handle.block_on(cmd.query_async(conn))).unwrap()
    };

    // A realistic epoch: the script must stay exact at today's microsecond timestamps.
    let epoch = redis.time_micros().await as i64;
    let mut runner = TestRunner::new(Config::with_cases(128));
    let case_no = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&case(), |(quotas, steps)| {
        let mut conn = conn.clone();
        let n = case_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let policy = Policy::new("agree", quotas.clone()).unwrap();
        // Distinct from every earlier run's keys, which may still live in a shared Redis.
        let hasher = ClientKeyHasher::new(b"agreement-test-secret-0123456789").unwrap();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| hasher.hash(support::unique_id(&format!("case-{n}-{c}"))))
            .collect();
        let keys: Vec<_> = clients
            .iter()
            .map(|client| RedisLimiter::bucket_keys(client, &policy))
            .collect();
        let all_keys: Vec<&String> = keys.iter().flatten().collect();
        let mut states: Vec<Option<Vec<BucketState>>> = vec![None; CLIENTS];
        let smallest = quotas.iter().map(Quota::capacity).min().unwrap();
        let mut now = epoch;
        for (dt, batch) in steps {
            now += dt;
            let at = now as u64;

            // One call, the checks in order; the core decides them one after the other at
            // the same instant, and computes the TTL of every bucket it writes.
            let mut call = redis::cmd("EVALSHA");
            let (mut call_keys, mut call_args) = (Vec::new(), Vec::new());
            let mut expected = Vec::new();
            let mut expected_ttls = Vec::new();
            let mut admitted = [false; CLIENTS];
            for &(c, cost) in &batch {
                let cost = cost.min(smallest);
                let state = states[c].get_or_insert_with(|| policy.full_buckets(at));
                let ours = bucket::check(&quotas, state, at, cost).unwrap();
                admitted[c] |= ours.allowed;
                expected.extend([
                    i64::from(ours.allowed),
                    ours.quota as i64,
                    ours.remaining as i64,
                    ours.reset_after_us as i64,
                    ours.retry_after_us.map_or(-1, |us| us as i64),
                ]);
                if ours.allowed {
                    for (s, q) in state.iter().zip(&quotas) {
                        expected_ttls.push(s.ttl_ms(q, at) as i64);
                    }
                }
                call_args.extend([cost, quotas.len() as u64]);
                for (key, q) in keys[c].iter().zip(&quotas) {
                    call_keys.push(key);
                    call_args.extend([q.unit(), q.refill(), q.max_level(), q.tick()]);
                }
            }
            call_args.push(at);
            call.arg(&sha)
                .arg(call_keys.len())
                .arg(&call_keys)
                .arg(&call_args);

            let before = run(&mut conn, redis::cmd("MGET").arg(&all_keys));
            let mut reply: Vec<i64> = redis::from_redis_value(run(&mut conn, &call)).unwrap();
            let ttls = reply.split_off(expected.len().min(reply.len()));
            prop_assert_eq!(
                &reply,
                &expected,
                "checks {:?} at {:+} µs over {:?}",
                batch,
                now - epoch,
                quotas
            );
            prop_assert_eq!(
                &ttls,
                &expected_ttls,
                "PX of the buckets written by {:?} at {:+} µs over {:?}",
                batch,
                now - epoch,
                quotas
            );

            let after: Vec<Option<String>> =
                redis::from_redis_value(run(&mut conn, redis::cmd("MGET").arg(&all_keys))).unwrap();
            let before: Vec<Option<String>> = redis::from_redis_value(before).unwrap();
            let per_client = quotas.len();
            for (c, state) in states.iter().enumerate() {
                let range = c * per_client..(c + 1) * per_client;
                if !admitted[c] {
                    prop_assert_eq!(&after[range.clone()], &before[range], "a denial wrote");
                    continue;
                }
                // What Redis holds is what the core holds.
                let stored: Vec<String> = state
                    .iter()
                    .flatten()
                    .map(|s| format!("{} {}", s.level, s.updated))
                    .collect();
                let held: Vec<String> = after[range].iter().flatten().cloned().collect();
                prop_assert_eq!(held, stored, "stored buckets");
            }
        }
        let _: redis::Value = run(&mut conn, redis::cmd("DEL").arg(&all_keys));
        Ok(())
    });
    result.unwrap();
}
