//! The Lua script and the core math agree: the same trace of (time, checks) gives the same
//! decisions in Redis and in memory, a call of several checks deciding them in order, each
//! seeing the writes of the ones before it.
//!
//! Redis decides with its own `TIME`, which a test cannot steer, so this test runs the
//! script with one line changed: `now` comes from the last argument instead of `TIME`.
//! Everything else, the whole of the math, is the production script.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::time::Duration;

use limiter_core::{ClientKeyHasher, ManualClock, Policy, Quota};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_redis::redis::{self, Script};
use limiter_redis::{RedisLimiter, SCRIPT};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const PRODUCTION_TIME: &str = "local now, last = server_now(), #ARGV";
const TRACE_TIME: &str = "local now, last = tonumber(ARGV[#ARGV]), #ARGV - 1";

/// Clients in a case: a batch may hold several checks of one client, or of different ones.
const CLIENTS: usize = 3;

fn quota() -> impl Strategy<Value = Quota> {
    (
        1u64..=500,
        1u64..=90_000_000,
        proptest::option::of(1u64..=600),
    )
        .prop_filter_map("over the precision bound", |(tokens, period_us, burst)| {
            let q = Quota::new(tokens, Duration::from_micros(period_us)).ok()?;
            match burst {
                Some(b) => q.allow_burst(b).ok(),
                None => Some(q),
            }
        })
}

/// Quotas, and steps: a time increment, then one script call of 1 to 4 checks
/// (client, cost) at that instant.
type Steps = Vec<(u64, Vec<(usize, u64)>)>;

fn case() -> impl Strategy<Value = (Vec<Quota>, Steps)> {
    let batch = proptest::collection::vec((0..CLIENTS, 1u64..=600), 1..=4);
    let steps = proptest::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..=5_000, 0u64..=100_000_000],
            batch,
        ),
        1..40,
    );
    (proptest::collection::vec(quota(), 1..=3), steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_and_core_math_make_the_same_decisions() {
    assert!(
        SCRIPT.contains(PRODUCTION_TIME),
        "the script's entry point changed"
    );
    let traced = Script::new(&SCRIPT.replace(PRODUCTION_TIME, TRACE_TIME));
    let redis = support::TestRedis::start().await;
    let mut conn = redis.raw().await;
    let sha = traced.prepare_invoke().load_async(&mut conn).await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let stored =
        |conn: &mut redis::aio::MultiplexedConnection, keys: &[&String]| -> Vec<Option<String>> {
            tokio::task::block_in_place(|| {
                handle.block_on(redis::cmd("MGET").arg(keys).query_async(conn))
            })
            .unwrap()
        };

    // A realistic epoch: the script must stay exact at today's microsecond timestamps.
    let epoch = redis.time_micros().await;
    let mut runner = TestRunner::new(Config::with_cases(48));
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
        let clock = ManualClock::new();
        let memory =
            MemoryLimiter::with_clock(MemoryConfig { max_buckets: 64 }, clock.clone()).unwrap();
        let smallest = quotas.iter().map(Quota::capacity).min().unwrap();
        let all_keys: Vec<&String> = keys.iter().flatten().collect();
        let mut now = 0u64;
        for (dt, batch) in steps {
            now += dt;
            clock.set(Duration::from_micros(now));

            // One call, the checks in order; the core decides them one after the other at
            // the same instant.
            let (mut call_keys, mut call_args) = (Vec::new(), Vec::new());
            let mut expected = Vec::new();
            let mut admitted = [false; CLIENTS];
            for &(c, cost) in &batch {
                let cost = cost.min(smallest);
                let ours = memory.check_sync(&clients[c], &policy, cost).unwrap();
                admitted[c] |= ours.allowed;
                expected.extend([
                    i64::from(ours.allowed),
                    ours.quota.unwrap() as i64,
                    ours.remaining as i64,
                    ours.reset_after.as_micros() as i64,
                    ours.retry_after.map_or(-1, |d| d.as_micros() as i64),
                ]);
                call_args.extend([cost, quotas.len() as u64]);
                for (key, q) in keys[c].iter().zip(&quotas) {
                    call_keys.push(key);
                    call_args.extend([q.unit(), q.refill(), q.max_level()]);
                }
            }
            call_args.push(epoch + now);

            // The buckets carry TTLs in real time, but the trace runs on its own clock: a key
            // Redis expired between two steps would be a full bucket to the script and not to
            // the core. So one transaction runs the call, reads the TTLs it set and removes
            // them; between steps, nothing but the script changes a key.
            let before = stored(&mut conn, &all_keys);
            let mut step = redis::pipe();
            step.atomic()
                .cmd("EVALSHA")
                .arg(&sha)
                .arg(call_keys.len())
                .arg(&call_keys)
                .arg(&call_args);
            for key in &all_keys {
                step.cmd("PTTL").arg(key);
            }
            for key in &all_keys {
                step.cmd("PERSIST").arg(key).ignore();
            }
            let mut results: Vec<redis::Value> =
                tokio::task::block_in_place(|| handle.block_on(step.query_async(&mut conn)))
                    .unwrap();
            let ttls: Vec<i64> = results
                .split_off(1)
                .into_iter()
                .map(|v| redis::from_redis_value(v).unwrap())
                .collect();
            let reply: Vec<i64> = redis::from_redis_value(results.remove(0)).unwrap();
            prop_assert_eq!(
                &reply,
                &expected,
                "checks {:?} at +{} µs over {:?}",
                batch,
                now,
                quotas
            );

            let after = stored(&mut conn, &all_keys);
            let per_client = quotas.len();
            for (c, client_keys) in keys.iter().enumerate() {
                let range = c * per_client..(c + 1) * per_client;
                if !admitted[c] {
                    // A write would have set a value and a TTL.
                    prop_assert_eq!(
                        &after[range.clone()],
                        &before[range.clone()],
                        "a denial wrote"
                    );
                    prop_assert!(ttls[range].iter().all(|&ttl| ttl < 0), "a denial set a TTL");
                    continue;
                }
                // Each key's TTL is its time to fill up, rounded up to the millisecond.
                for ((key, q), &ttl) in client_keys.iter().zip(&quotas).zip(&ttls[range]) {
                    let full_ms = q.full_refill().as_micros().div_ceil(1_000) as i64;
                    prop_assert!(
                        (0..=full_ms).contains(&ttl),
                        "{} ttl {} not within 0..={}",
                        key,
                        ttl,
                        full_ms
                    );
                }
            }
        }
        // The keys have no TTL left: a Redis shared through `REDIS_URL` must not keep them.
        let _: u64 = tokio::task::block_in_place(|| {
            handle.block_on(redis::cmd("DEL").arg(&all_keys).query_async(&mut conn))
        })
        .unwrap();
        Ok(())
    });
    result.unwrap();
}
