//! The default tiers against real Redis: anonymous gets 100, premium 5000, admin never
//! reaches Redis at all.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_core::{Backend, ClientKeyHasher, RateLimiter, Tier, TierPolicies};

async fn count_allowed(
    limiter: Arc<limiter_redis::RedisLimiter>,
    tier: Tier,
    id: &str,
    checks: usize,
) -> (usize, Vec<limiter_core::Decision>) {
    let key = ClientKeyHasher::new(b"tiers-test-secret-0123456789")
        .unwrap()
        .hash(support::unique_id(id));
    let policy = Arc::new(TierPolicies::default().get(tier).clone());
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in (t..checks).step_by(16) {
                    out.push(limiter.check(&key, &policy, 1).await.unwrap());
                }
                out
            })
        })
        .collect();
    let mut decisions = Vec::new();
    for t in tasks {
        decisions.extend(t.await.unwrap());
    }
    (decisions.iter().filter(|d| d.allowed).count(), decisions)
}

/// Tokens a quota refilling one every `every` gained since `started`.
fn refilled(started: Instant, every: Duration) -> usize {
    usize::try_from(started.elapsed().as_nanos() / every.as_nanos()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_gets_100_then_denials_with_a_wait() {
    let redis = support::TestRedis::start().await;
    let limiter = Arc::new(redis.limiter());
    let started = Instant::now();
    let (allowed, decisions) = count_allowed(limiter, Tier::Anonymous, "198.51.100.23", 130).await;
    // 100 per minute refills one token every 600 ms: the run usually takes far less.
    let most = 100 + refilled(started, Duration::from_millis(600));
    assert!(
        (100..=most).contains(&allowed),
        "{allowed} allowed, {most} at most"
    );
    for d in decisions.iter().filter(|d| !d.allowed) {
        assert_eq!(d.backend, Backend::Redis);
        assert_eq!(d.limit, 100);
        let wait = d.retry_after.expect("a denial says when to retry");
        assert!(wait.as_millis() > 0 && wait.as_millis() <= 600, "{wait:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn premium_gets_5000() {
    let redis = support::TestRedis::start().await;
    let limiter = Arc::new(redis.limiter());
    let started = Instant::now();
    let (allowed, _) = count_allowed(limiter, Tier::Premium, "premium-key-7", 5_500).await;
    // 5000 per minute: the bucket, and what refilled during the run (one every 12 ms).
    let most = 5_000 + refilled(started, Duration::from_millis(12));
    assert!(
        (5_000..=most).contains(&allowed),
        "{allowed} allowed, {most} at most"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_never_touches_redis() {
    // Its own server, always: the command counts below are server-wide.
    let redis = support::TestRedis::container().await;
    let limiter = Arc::new(redis.limiter());
    let before = redis.command_calls().await;
    let (allowed, decisions) = count_allowed(limiter, Tier::Admin, "ops-console", 500).await;
    let after = redis.command_calls().await;
    assert_eq!(allowed, 500);
    assert!(decisions.iter().all(|d| d.backend == Backend::None));
    let without_info = |calls: Vec<(String, u64)>| {
        calls
            .into_iter()
            .filter(|(name, _)| name != "info" && name != "hello" && name != "client|setinfo")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_info(before),
        without_info(after),
        "admin checks sent commands to Redis"
    );
    assert!(redis.all_keys().await.is_empty());
}
