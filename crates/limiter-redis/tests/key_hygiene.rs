//! After a run, Redis holds no raw client ID, every key is hash-tagged, and every key
//! expires after its bucket is full again, and no later than twice its quota's full refill
//! (`Expiry::of`: a new expiry is twice the time to full).

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use limiter_core::{ClientKeyHasher, Policy, Quota, RateLimiter};
use limiter_redis::{RedisLimiter, redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_hashed_tagged_and_expire() {
    let redis_server = support::TestRedis::start().await;
    let limiter = redis_server.limiter();
    let hasher = ClientKeyHasher::new(b"hygiene-test-secret-0123456789").unwrap();
    let policy = Policy::new(
        "api",
        [
            // Keys that live minutes: none expires before the scan below reads it.
            Quota::per_minute(10).unwrap(),
            Quota::per_hour(5_000).unwrap().allow_burst(50).unwrap(),
        ],
    )
    .unwrap();
    let raw_ids = [
        "alice@example.com",
        "203.0.113.77",
        "sk_live_abcdef0123456789",
        "2001:db8::1",
    ];
    let mut ours = Vec::new();
    for id in &raw_ids {
        let key = hasher.hash(id);
        for _ in 0..7 {
            limiter.check(&key, &policy, 1).await.unwrap();
        }
        ours.extend(RedisLimiter::bucket_keys(&key, &policy));
    }

    // Every key in Redis, ours and any other test's, is checked for raw IDs and hygiene.
    let keys = redis_server.all_keys().await;
    for key in &ours {
        assert!(keys.contains(key), "{key} was not written");
    }
    let mut raw = redis_server.raw().await;
    for key in &keys {
        for id in &raw_ids {
            assert!(!key.contains(id), "{key} holds a raw client ID");
        }
        let tag = key
            .strip_prefix("rl:{")
            .and_then(|rest| rest.split_once('}'))
            .map(|(tag, _)| tag)
            .unwrap_or_else(|| panic!("{key} has no hash tag"));
        assert!(
            tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
            "{key}"
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
        if ttl == -2 && !ours.contains(key) {
            continue; // another test's key, expired since the scan
        }
        assert!(ttl > 0, "{key} has no TTL");
        if !ours.contains(key) {
            continue; // another test's key (a shared REDIS_URL): checked as far as we can
        }
        let quota = policy
            .quotas()
            .iter()
            .find(|q| key.ends_with(&format!("-{}-{}:v2", q.period_micros(), q.capacity())))
            .unwrap_or_else(|| panic!("{key} names no quota of the policy"));
        // Seven tokens were taken from each bucket at once: it is full again seven tokens'
        // refill after the last check, and the key's expiry was set to twice that.
        let full_us = 7 * quota.period_micros() / quota.tokens();
        let (least, most) = (
            full_us as i64 / 1_000 - 5_000,
            2 * full_us as i64 / 1_000 + 1,
        );
        assert!(
            (least..=most).contains(&ttl),
            "{key}: TTL {ttl} ms, not within the {least}..={most} ms of its bucket's refill"
        );
    }
}
