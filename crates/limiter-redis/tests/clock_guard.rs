//! Time never runs backwards for a bucket. A bucket last written at a later Redis time than
//! the server now reads (a master whose clock ran ahead, then a promoted replica whose clock
//! is behind) counts as "no time has passed": it does not refill, so a failover cannot hand
//! a client a second burst.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use limiter_core::{ClientKeyHasher, Policy, Quota, RateLimiter};
use limiter_redis::redis::AsyncCommands;
use limiter_redis::{RedisLimiter, StoredBucket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_written_later_than_now_does_not_refill() {
    let redis = support::TestRedis::start().await;
    let limiter = redis.limiter();
    let mut raw = redis.raw().await;
    let hasher = ClientKeyHasher::new(b"clock-guard-test-secret-0123456").unwrap();
    // 10 per second: a token every 100 ms; a full bucket is 10 tokens.
    let policy = Policy::new("clock", [Quota::per_second(10).unwrap()]).unwrap();
    let quota = policy.quotas()[0];

    // A bucket as the script stores it; its expiry is the key's (120 s, set below).
    let stored = |level: u64, updated: u64, now: u64| {
        StoredBucket {
            level,
            updated,
            expires_ms: now / 1_000 + 120_000,
        }
        .encode()
        .to_vec()
    };
    let stamp_empty = |client: &limiter_core::ClientKey, at_us: u64, now: u64| {
        let key = RedisLimiter::bucket_keys(client, &policy).remove(0);
        (key, stored(0, at_us, now))
    };

    // Written empty one minute "in the future" of this server's clock.
    let ahead = hasher.hash(support::unique_id("clock-ahead"));
    let now = redis.time_micros().await;
    let (key, value) = stamp_empty(&ahead, now + 60_000_000, now);
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
    let held: Vec<u8> = raw.get(&key).await.unwrap();
    assert_eq!(
        held, value,
        "a denial writes nothing, so the later time is kept"
    );

    // The control: the same empty bucket stamped a minute in the past has refilled.
    let behind = hasher.hash(support::unique_id("clock-behind"));
    let now = redis.time_micros().await;
    let (key, value) = stamp_empty(&behind, now - 60_000_000, now);
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
    // Stored without an expiry of its own (0), so the check sets one.
    let value = StoredBucket {
        level: full,
        updated: later,
        expires_ms: 0,
    };
    let _: () = raw.set_ex(&key, &value.encode()[..], 120).await.unwrap();
    assert!(
        limiter
            .check(&ahead_full, &policy, 1)
            .await
            .unwrap()
            .allowed
    );
    let held: Vec<u8> = raw.get(&key).await.unwrap();
    let held = StoredBucket::decode(&held).unwrap();
    assert_eq!(
        (held.level, held.updated),
        (full - quota.unit(), later),
        "stamped with its later time"
    );
    // Its expiry counts from that later time too: twice the time until it is full again, a
    // minute from now plus one token's refill (not twice the refill alone, which would
    // forget it a minute early).
    let ttl: i64 = raw.pttl(&key).await.unwrap();
    assert!(
        (119_000..=120_200).contains(&ttl),
        "TTL {ttl} ms counts from the server's now, not the bucket's stamp"
    );
    let expires: u64 = limiter_redis::redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(held.expires_ms, expires, "the stored expiry is the key's");
}
