//! A burst of checks on a cold limiter opens the configured connections and no more, and
//! none of the burst fails waiting for the pool.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::sync::Arc;

use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
use limiter_redis::redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_opens_each_connection_once() {
    // Its own container: the connection count must not include other tests' clients.
    let redis_server = support::TestRedis::container().await;
    let limiter = Arc::new(redis_server.limiter());
    let connections = limiter.config().connections;
    let policy = Arc::new(Policy::new("burst", [Quota::per_second(1_000_000).unwrap()]).unwrap());
    let tasks: Vec<_> = (0..512u128)
        .map(|i| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move { limiter.check(&ClientKey::from(i), &policy, 1).await })
        })
        .collect();
    for t in tasks {
        let decision = t.await.unwrap();
        assert!(
            decision.is_ok(),
            "a check of the cold burst failed: {decision:?}"
        );
    }

    let mut raw = redis_server.raw().await;
    let stats: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut raw)
        .await
        .unwrap();
    let opened: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The limiter's connections, plus this raw one.
    assert_eq!(opened, connections + 1, "connections opened by the burst");
}
