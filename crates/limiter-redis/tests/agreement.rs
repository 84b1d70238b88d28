//! The Lua script and the core math agree: the same trace of (time, checks) gives the same
//! decisions in Redis and in `limiter_core::bucket`, a call of several checks deciding them
//! in order, each seeing the writes of the ones before it; the script replies exactly the
//! buckets the core measures, stores exactly the buckets the core holds, and gives every key
//! exactly the expiry of [`Expiry::of`].
//!
//! Redis decides with its own `TIME`, which a test cannot steer, so this test runs the
//! script with three lines changed: `now` comes from the last argument instead of `TIME`;
//! `call` records the expiry of every `SET` (`KEEPTTL` as -1, `PXAT` as its time) and writes
//! the bucket without it (the trace runs on its own clock, so a key must not expire in real
//! time between two steps); and the reply carries the recorded expiries after the decisions.
//! Everything else, the whole of the math and of the expiry arithmetic, is the production
//! script. `key_hygiene.rs` checks real `PTTL`s.
//!
//! The script runs a call of one policy of one quota inline and any other through its
//! general functions: a case sends its policy once, or twice (two policy sections with the
//! same quotas, each check naming one at random), so both paths decide every kind of case.
//!
//! Quotas span every limit and burst from 1 to 10^9 and periods from 1 ms to 7 days, with
//! cases at the edge of the exact representation (ticks of 1 µs on one side, coarser on the
//! other); time sometimes steps back, as after a failover to a replica whose clock is behind.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::time::Duration;

use limiter_core::bucket::{self, BucketState, Measure};
use limiter_core::{ClientKeyHasher, MAX_LEVEL, MAX_WAIT_US, Policy, Quota};
use limiter_redis::redis::{self, Script};
use limiter_redis::{Expiry, RedisLimiter, SCRIPT, StoredBucket};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const PRODUCTION_TIME: &str = "local now, last = time[1] * 1000000 + time[2], #ARGV";
const TRACE_TIME: &str = "local now, last = ARGV[#ARGV] + 0, #ARGV - 1";
const PRODUCTION_CALL: &str = "local call, try_call = redis.call, redis.pcall";
const TRACE_CALL: &str = "local expiries = {}
local function call(...)
    local args = {...}
    if args[1] == 'SET' then
        expiries[#expiries + 1] = args[4] == 'KEEPTTL' and -1 or args[5]
        return redis.call('SET', args[2], args[3])
    end
    return redis.call(...)
end
local try_call = redis.pcall";
const PRODUCTION_RETURN: &str = "\nreturn reply\n";
const TRACE_RETURN: &str = "
for i = 1, #expiries do reply[#reply + 1] = expiries[i] end
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
/// checks (client, cost, which of the two policy sections) at that instant.
type Steps = Vec<(i64, Vec<(usize, u64, bool)>)>;

fn case() -> impl Strategy<Value = (Vec<Quota>, bool, Steps)> {
    let cost = prop_oneof![4 => 1u64..=600, 1 => 1u64..=BILLION];
    let batch = proptest::collection::vec((0..CLIENTS, cost, any::<bool>()), 1..=4);
    let step = prop_oneof![
        2 => Just(0i64),
        3 => 0i64..=5_000,
        3 => 0i64..=100_000_000,
        1 => 0i64..=WEEK_US as i64,
        1 => -100_000_000i64..0,
    ];
    let steps = proptest::collection::vec((step, batch), 1..40);
    (
        proptest::collection::vec(quotas(), 1..=3),
        any::<bool>(),
        steps,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_and_core_math_make_the_same_decisions_and_expiries() {
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
    let case_no = std::sync::atomic::AtomicU64::new(0);
    let run_case = |epoch: i64, (quotas, twice, steps): (Vec<Quota>, bool, Steps)| {
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
        // Each key's expiry in ms, as the script stored it: 0 until it is written.
        let mut expiries = vec![vec![0u64; quotas.len()]; CLIENTS];
        let smallest = quotas.iter().map(Quota::capacity).min().unwrap();
        let mut section = vec![quotas.len() as u64];
        for q in &quotas {
            section.extend([q.unit(), q.refill(), q.max_level(), q.tick()]);
        }
        let policy_args = if twice {
            [&[2][..], &section, &section].concat()
        } else {
            [&[1][..], &section].concat()
        };
        let mut now = epoch;
        for (dt, batch) in steps {
            now += dt;
            let at = now as u64;

            // One call, the checks in order; the core decides them one after the other at
            // the same instant, measuring every bucket, and the expiry rule gives each
            // written key its expiry.
            let mut call = redis::cmd("EVALSHA");
            let (mut call_keys, mut call_args) = (Vec::new(), policy_args.clone());
            let mut expected = vec![now];
            let mut outcomes = Vec::new();
            let mut expected_expiries = Vec::new();
            let mut admitted = [false; CLIENTS];
            for &(c, cost, second) in &batch {
                let cost = cost.min(smallest);
                let state = states[c].get_or_insert_with(|| policy.full_buckets(at));
                let before = state.clone();
                let ours = bucket::check(&quotas, state, at, cost).unwrap();
                admitted[c] |= ours.allowed;
                expected.push(i64::from(ours.allowed));
                let mut measures = Vec::new();
                for (i, q) in quotas.iter().enumerate() {
                    // What the script measures: the bucket as taken from, if admitted, else
                    // as it stands at `now`; stamped at the later of the two ticks.
                    let s = if ours.allowed { state[i] } else { before[i] };
                    let stamp = (s.updated / q.tick()).max(q.ticks(at));
                    let level = if ours.allowed {
                        s.level
                    } else {
                        s.level_at(q, at)
                    };
                    expected.extend([level as i64, (stamp - q.ticks(at)) as i64]);
                    measures.push(Measure { level, stamp });
                    if ours.allowed {
                        let rule = Expiry::of(q, level, stamp, at, expiries[c][i]);
                        if let Expiry::At(ms) = rule {
                            expiries[c][i] = ms;
                        }
                        expected_expiries.push(match rule {
                            Expiry::Keep => -1,
                            Expiry::At(ms) => ms as i64,
                        });
                        // What users rely on: a key outlives its bucket's time to full,
                        // and a new expiry is at most twice that, from now.
                        let full_us = s
                            .updated
                            .saturating_add(s.full_after(q))
                            .min(at + MAX_WAIT_US);
                        prop_assert!(expiries[c][i] * 1_000 >= full_us, "expires before full");
                        if let Expiry::At(ms) = rule {
                            prop_assert!(ms * 1_000 < 2 * full_us - at + 1_000, "expires late");
                        }
                    }
                }
                outcomes.push((ours, measures, cost));
                call_args.extend([if twice && second { 2 } else { 1 }, cost]);
                call_keys.extend(&keys[c]);
            }
            call_args.push(at);
            call.arg(&sha)
                .arg(call_keys.len())
                .arg(&call_keys)
                .arg(&call_args);

            let before = run(&mut conn, redis::cmd("MGET").arg(&all_keys));
            let mut reply: Vec<i64> = redis::from_redis_value(run(&mut conn, &call)).unwrap();
            let set = reply.split_off(expected.len().min(reply.len()));
            prop_assert_eq!(
                &reply,
                &expected,
                "checks {:?} at {:+} µs over {:?}",
                batch,
                now - epoch,
                quotas
            );
            prop_assert_eq!(
                &set,
                &expected_expiries,
                "expiries of the buckets written by {:?} at {:+} µs over {:?}",
                batch,
                now - epoch,
                quotas
            );
            // The worker's half: the core turns the measures into the same outcome.
            for (ours, measures, cost) in outcomes {
                let theirs = bucket::outcome_of(&quotas, &measures, at, cost, ours.allowed);
                prop_assert_eq!(theirs, Some(ours), "outcome from the measures");
            }

            let after: Vec<Option<Vec<u8>>> =
                redis::from_redis_value(run(&mut conn, redis::cmd("MGET").arg(&all_keys))).unwrap();
            let before: Vec<Option<Vec<u8>>> = redis::from_redis_value(before).unwrap();
            let per_client = quotas.len();
            for (c, state) in states.iter().enumerate() {
                let range = c * per_client..(c + 1) * per_client;
                if !admitted[c] {
                    prop_assert_eq!(&after[range.clone()], &before[range], "a denial wrote");
                    continue;
                }
                // What Redis holds is what the core holds, with the key's expiry.
                let stored: Vec<StoredBucket> = state
                    .iter()
                    .flatten()
                    .zip(&expiries[c])
                    .map(|(s, &expires_ms)| StoredBucket {
                        level: s.level,
                        updated: s.updated,
                        expires_ms,
                    })
                    .collect();
                let held: Vec<StoredBucket> = after[range]
                    .iter()
                    .flatten()
                    .map(|bytes| StoredBucket::decode(bytes).unwrap())
                    .collect();
                prop_assert_eq!(held, stored, "stored buckets");
            }
        }
        let _: redis::Value = run(&mut conn, redis::cmd("DEL").arg(&all_keys));
        Ok(())
    };

    // Cases random traces rarely hit. An expiry that falls exactly when the bucket is full
    // again is kept: a token of 1 per second taken on a millisecond, then again the moment it
    // is back, is full again at exactly the expiry the first write set.
    let exact = Quota::per_second(1).unwrap();
    for twice in [false, true] {
        let steps = vec![(0, vec![(0, 1, false)]), (1_000_000, vec![(0, 1, twice)])];
        run_case(epoch - epoch % 1_000, (vec![exact], twice, steps)).unwrap();
    }

    let mut runner = TestRunner::new(Config::with_cases(128));
    runner.run(&case(), |case| run_case(epoch, case)).unwrap();
}
