//! Three workers (three `RedisLimiter`s, each with its own pool) × 64 tasks hammer one client
//! for about two seconds: together they admit exactly capacity + ⌊rate × elapsed⌋, within
//! one token, and never more.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_core::{ClientKeyHasher, Policy, Quota, RateLimiter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_redis_admit_exactly_the_limit() {
    let redis = support::TestRedis::start().await;
    // 20 per second (a token every 50 ms, far above scheduling noise), burst 100.
    let policy = Arc::new(
        Policy::new(
            "shared",
            [Quota::per_second(20).unwrap().allow_burst(100).unwrap()],
        )
        .unwrap(),
    );
    let key = ClientKeyHasher::new(b"accuracy-test-secret-0123456789")
        .unwrap()
        .hash(support::unique_id("one-client-many-workers"));
    let workers: Vec<_> = (0..3).map(|_| Arc::new(redis.limiter())).collect();
    for w in &workers {
        w.warm_up().await.unwrap();
    }

    let run_for = Duration::from_secs(2);
    // Read on one connection opened beforehand, so the bracket adds only round trips.
    let mut clock = redis.raw().await;
    let started_redis = support::time_micros(&mut clock).await;
    let deadline = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for worker in &workers {
        for _ in 0..64 {
            let (worker, policy) = (worker.clone(), policy.clone());
            tasks.push(tokio::spawn(async move {
                let (mut allowed, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match worker.check(&key, &policy, 1).await {
                        Ok(d) => allowed += u64::from(d.allowed),
                        Err(_) => errors += 1,
                    }
                }
                (allowed, errors)
            }));
        }
    }
    let (mut allowed, mut errors) = (0, 0);
    for t in tasks {
        let (a, e) = t.await.unwrap();
        allowed += a;
        errors += e;
    }
    let ended_redis = support::time_micros(&mut clock).await;

    assert_eq!(errors, 0);
    // Redis's own clock brackets every decision of the run.
    let elapsed_us = ended_redis - started_redis;
    let ceiling = 100 + elapsed_us * 20 / 1_000_000;
    assert!(
        allowed <= ceiling,
        "admitted {allowed}, more than {ceiling} over {elapsed_us} µs"
    );
    assert!(
        allowed + 1 >= ceiling,
        "admitted {allowed}, expected {ceiling} within one token"
    );
}
