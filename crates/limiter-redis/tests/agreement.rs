//! The Lua script and the core math agree: the same trace of (time, cost) gives the same
//! decisions in Redis and in memory.
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

const PRODUCTION_TIME: &str = "return decide(server_now())";
const TRACE_TIME: &str = "return decide(tonumber(ARGV[#ARGV]))";

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

fn case() -> impl Strategy<Value = (Vec<Quota>, Vec<(u64, u64)>)> {
    let steps = proptest::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..=5_000, 0u64..=100_000_000],
            1u64..=600,
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
    let conn = redis.raw().await;
    let handle = tokio::runtime::Handle::current();

    // A realistic epoch: the script must stay exact at today's microsecond timestamps.
    let epoch = redis.time_micros().await;
    let mut runner = TestRunner::new(Config::with_cases(48));
    let case_no = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&case(), |(quotas, steps)| {
        let mut conn = conn.clone();
        let n = case_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let policy = Policy::new("agree", quotas.clone()).unwrap();
        // Distinct from every earlier run's keys, which may still live in a shared Redis.
        let client = ClientKeyHasher::new(b"agreement-test-secret-0123456789")
            .unwrap()
            .hash(support::unique_id(&format!("case-{n}")));
        let keys = RedisLimiter::bucket_keys(&client, &policy);
        let clock = ManualClock::new();
        let memory =
            MemoryLimiter::with_clock(MemoryConfig { max_buckets: 16 }, clock.clone()).unwrap();
        let smallest = quotas.iter().map(Quota::capacity).min().unwrap();
        let mut now = 0u64;
        for (dt, cost) in steps {
            now += dt;
            clock.set(Duration::from_micros(now));
            let cost = cost.min(smallest);
            let ours = memory.check_sync(&client, &policy, cost).unwrap();

            let mut invocation = traced.prepare_invoke();
            invocation.arg(cost);
            for (key, q) in keys.iter().zip(&quotas) {
                invocation
                    .key(key)
                    .arg(q.unit())
                    .arg(q.refill())
                    .arg(q.max_level());
            }
            invocation.arg(epoch + now);
            let stored = |conn: &mut redis::aio::MultiplexedConnection| -> Vec<Option<String>> {
                tokio::task::block_in_place(|| {
                    handle.block_on(redis::cmd("MGET").arg(&keys).query_async(conn))
                })
                .unwrap()
            };
            let before = stored(&mut conn);
            let reply: Vec<i64> =
                tokio::task::block_in_place(|| handle.block_on(invocation.invoke_async(&mut conn)))
                    .unwrap();
            if !ours.allowed {
                prop_assert_eq!(&stored(&mut conn), &before, "a denied request wrote");
            }

            let expected = vec![
                i64::from(ours.allowed),
                ours.quota.unwrap() as i64,
                ours.remaining as i64,
                ours.reset_after.as_micros() as i64,
                ours.retry_after.map_or(-1, |d| d.as_micros() as i64),
            ];
            prop_assert_eq!(
                &reply,
                &expected,
                "cost {} at +{} µs over {:?}",
                cost,
                now,
                quotas
            );

            if ours.allowed {
                // Each key's TTL is its time to fill up, rounded up to the millisecond.
                for (key, q) in keys.iter().zip(&quotas) {
                    let ttl: i64 = tokio::task::block_in_place(|| {
                        handle.block_on(redis::cmd("PTTL").arg(key).query_async(&mut conn))
                    })
                    .unwrap();
                    let full_ms = q.full_refill().as_micros().div_ceil(1_000) as i64;
                    prop_assert!(
                        ttl > 0 && ttl <= full_ms,
                        "{} ttl {} > {}",
                        key,
                        ttl,
                        full_ms
                    );
                }
            }
        }
        Ok(())
    });
    result.unwrap();
}
