//! Time never runs backwards for a bucket. A bucket last written at a later Redis time than
//! the server now reads (a master whose clock ran ahead, then a promoted replica whose clock
//! is behind) counts as "no time has passed": it does not refill, so a failover cannot hand
//! a client a second burst.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use limiter_core::{ClientKeyHasher, Policy, Quota, RateLimiter};
use limiter_redis::RedisLimiter;
use limiter_redis::redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_written_later_than_now_does_not_refill() {
    let redis = support::TestRedis::start().await;
    let limiter = redis.limiter();
    let mut raw = redis.raw().await;
    let hasher = ClientKeyHasher::new(b"clock-guard-test-secret-0123456").unwrap();
    // 10 per second: a token every 100 ms; a full bucket is 10 tokens.
    let policy = Policy::new("clock", [Quota::per_second(10).unwrap()]).unwrap();
    let quota = policy.quotas()[0];

    let stamp_empty = |client: &limiter_core::ClientKey, at_us: u64| {
        let key = RedisLimiter::bucket_keys(client, &policy).remove(0);
        (key, format!("0 {at_us}"))
    };

    // Written empty one minute "in the future" of this server's clock.
    let ahead = hasher.hash(support::unique_id("clock-ahead"));
    let now = redis.time_micros().await;
    let (key, value) = stamp_empty(&ahead, now + 60_000_000);
    let _: () = raw.set_ex(&key, &value, 120).await.unwrap();
    let d = limiter.check(&ahead, &policy, 1).await.unwrap();
    assert!(
        !d.allowed,
        "an empty bucket stamped later must not have refilled: {d:?}"
    );
    assert_eq!(d.remaining, 0);
    // It waits for one token's refill from the bucket's own (later) time: the minute until
    // then, less the moments this test took since reading `now`, and one token.
    let token = u128::from(quota.unit() / quota.refill());
    let retry = d.retry_after.unwrap().as_micros();
    assert!(
        (60_000_000..=60_000_000 + token).contains(&retry),
        "retry after {retry} µs, not from the stamp"
    );
    let reset = d.reset_after.as_micros();
    assert!(
        (60_000_000 + token..=61_000_000).contains(&reset),
        "reset after {reset} µs, not from the stamp"
    );
    let stored: String = raw.get(&key).await.unwrap();
    assert_eq!(
        stored, value,
        "a denial writes nothing, so the later time is kept"
    );

    // The control: the same empty bucket stamped a minute in the past has refilled.
    let behind = hasher.hash(support::unique_id("clock-behind"));
    let now = redis.time_micros().await;
    let (key, value) = stamp_empty(&behind, now - 60_000_000);
    let _: () = raw.set_ex(&key, &value, 120).await.unwrap();
    let d = limiter.check(&behind, &policy, 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 9, "full again after a minute, less this check");

    // Admitted later on the slow clock, the bucket keeps its later time: time resumes from
    // there, not from the server's earlier now.
    let ahead_full = hasher.hash(support::unique_id("clock-ahead-full"));
    let now = redis.time_micros().await;
    let key = RedisLimiter::bucket_keys(&ahead_full, &policy).remove(0);
    let later = now + 60_000_000;
    let full = quota.max_level();
    let _: () = raw
        .set_ex(&key, format!("{full} {later}"), 120)
        .await
        .unwrap();
    assert!(
        limiter
            .check(&ahead_full, &policy, 1)
            .await
            .unwrap()
            .allowed
    );
    let stored: String = raw.get(&key).await.unwrap();
    assert_eq!(stored, format!("{} {later}", full - quota.unit()));
    // Its TTL counts from that later time too: it lives until a minute from now plus the
    // one token's refill, not the refill alone (which would forget it a minute early).
    let ttl: i64 = raw.pttl(&key).await.unwrap();
    assert!(
        (59_000..=60_100).contains(&ttl),
        "TTL {ttl} ms counts from the server's now, not the bucket's stamp"
    );
}
