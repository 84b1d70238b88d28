//! Hostile or nonsensical input gives a clear error or a normal decision, never a panic.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test loudly"
)]

use limiter_core::{ClientKeyHasher, Error, ManualClock, Policy, Quota};
use limiter_memory::{MemoryConfig, MemoryLimiter};

#[test]
fn any_client_id_hashes_and_is_limited() {
    let hasher = ClientKeyHasher::new(b"bad-input-test-secret-0123").unwrap();
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 100 }, ManualClock::new()).unwrap();
    let policy = Policy::new("p", [Quota::per_minute(1).unwrap()]).unwrap();
    let ids: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![b'x'; 1 << 20],
        vec![0xff, 0xfe, 0x80, 0xc0],
        b"\0\r\n\t\x1b[31m\x7f".to_vec(),
        "ünïcødé 🦀".as_bytes().to_vec(),
    ];
    let mut keys = Vec::new();
    for id in &ids {
        let key = hasher.hash(id);
        assert_eq!(key.to_hex().len(), 32);
        assert!(key.to_hex().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(limiter.check_sync(&key, &policy, 1).unwrap().allowed);
        assert!(!limiter.check_sync(&key, &policy, 1).unwrap().allowed);
        keys.push(key);
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), ids.len(), "distinct IDs must get distinct keys");
}

#[test]
fn zero_huge_and_overflowing_costs_are_errors() {
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 10 }, ManualClock::new()).unwrap();
    let policy = Policy::new(
        "p",
        [
            Quota::per_second(10).unwrap(),
            Quota::per_hour(100).unwrap(),
        ],
    )
    .unwrap();
    let key = 1u128.into();
    assert!(matches!(
        limiter.check_sync(&key, &policy, 0),
        Err(Error::ZeroCost)
    ));
    for cost in [11, 1 << 40, u64::MAX] {
        let err = limiter.check_sync(&key, &policy, cost).unwrap_err();
        assert!(err.is_insufficient_capacity(), "{err}");
        assert!(err.to_string().contains("can never pass"), "{err}");
    }
    assert!(
        limiter.is_empty(),
        "a refused request must not create a bucket"
    );
    // The full capacity is a valid cost.
    assert!(limiter.check_sync(&key, &policy, 10).unwrap().allowed);
}

#[test]
fn nonsense_quotas_are_errors() {
    use std::time::Duration;
    let cases = [
        Quota::per_minute(0),
        Quota::new(10, Duration::ZERO),
        Quota::new(10, Duration::from_nanos(10)),
        Quota::new(u64::MAX, Duration::from_secs(1)),
        Quota::new(1, Duration::MAX),
        Quota::per_second(5).and_then(|q| q.allow_burst(0)),
        Quota::per_second(5).and_then(|q| q.allow_burst(u64::MAX / 2)),
    ];
    for case in cases {
        let err = case.unwrap_err();
        assert!(matches!(err, Error::InvalidQuota { .. }), "{err}");
        assert!(err.is_invalid_input());
    }
}

#[test]
fn unlimited_policies_track_nothing() {
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 10 }, ManualClock::new()).unwrap();
    let admin = Policy::unlimited("admin").unwrap();
    for cost in [1, u64::MAX] {
        let d = limiter.check_sync(&1u128.into(), &admin, cost).unwrap();
        assert!(d.allowed);
        assert_eq!(d.backend, limiter_core::Backend::None);
    }
    assert!(limiter.is_empty());
}
