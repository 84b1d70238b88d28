//! Checks per second and latency of `RedisLimiter` at several concurrencies, against one
//! Redis. Run by `scripts/bench-redis.sh`, which puts `redis-benchmark` running the same
//! script beside it; alone:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6390 [MAX_BATCH=N] cargo bench -p limiter-redis --bench throughput -- [SECS] [TASKS...]
//! ```
//!
//! `MAX_BATCH` sets [`RedisConfig::max_batch`] (default: the default, 64); 1 sends every
//! check as its own script call.
//!
//! Each task runs a closed loop of checks of cost 1 on keys drawn in turn from 10,000
//! clients, with a quota that admits every check (the costlier path: it writes): one token
//! per second from a burst of 10^9, so each bucket's key lives for seconds, as a real
//! client's does. One line per concurrency: `tasks checks_per_sec p50_us p99_us errors`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
use limiter_redis::{RedisConfig, RedisLimiter};

const KEYS: u128 = 10_000;

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let mut tasks: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if tasks.is_empty() {
        tasks = vec![1, 16, 64, 256];
    }
    let url = std::env::var("REDIS_URL").expect("set REDIS_URL to the Redis to measure");
    let mut config = RedisConfig::from_url(url);
    if let Ok(max) = std::env::var("MAX_BATCH").as_deref()
        && !max.is_empty()
    {
        config.max_batch = max.parse().expect("MAX_BATCH must be a number");
    }
    let limiter = Arc::new(RedisLimiter::new(config).unwrap());
    limiter.warm_up().await.expect("Redis must answer");
    let quota = Quota::per_second(1)
        .unwrap()
        .allow_burst(1_000_000_000)
        .unwrap();
    let policy = Arc::new(Policy::new("bench", [quota]).unwrap());

    println!("tasks checks_per_sec p50_us p99_us errors");
    for n in tasks {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let (limiter, policy) = (limiter.clone(), policy.clone());
                tokio::spawn(async move {
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let (mut i, mut errors) = (t as u128, 0u64);
                    while Instant::now() < deadline {
                        let key = ClientKey::from(i % KEYS + 1);
                        i += n as u128;
                        let start = Instant::now();
                        match limiter.check(&key, &policy, 1).await {
                            Ok(_) => {
                                let us = start.elapsed().as_micros() as u64;
                                hist.saturating_record(us.max(1));
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (hist, errors)
                })
            })
            .collect();
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut errors = 0;
        for h in handles {
            let (hist, e) = h.await.unwrap();
            all.add(hist).unwrap();
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{n} {:.0} {} {} {errors}",
            all.len() as f64 / elapsed,
            all.value_at_quantile(0.5),
            all.value_at_quantile(0.99)
        );
    }
}
