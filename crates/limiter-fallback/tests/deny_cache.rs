//! The deny cache answers repeated denials locally and never changes a decision.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use limiter_core::{
    ClientKey, Decision, Error, ManualClock, Policy, Quota, RateLimiter, async_trait,
};
use limiter_fallback::DenyCache;
use limiter_memory::{MemoryConfig, MemoryLimiter};
use proptest::prelude::*;

#[derive(Debug)]
struct Counted {
    memory: MemoryLimiter<ManualClock>,
    calls: AtomicUsize,
}

#[async_trait]
impl RateLimiter for Counted {
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.memory.check(key, policy, cost).await
    }

    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.memory.peek(key, policy, cost).await
    }

    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.memory.refund(key, policy, tokens).await
    }
}

fn memory(clock: &ManualClock) -> MemoryLimiter<ManualClock> {
    MemoryLimiter::with_clock(MemoryConfig::default(), clock.clone()).unwrap()
}

fn cached(clock: &ManualClock, max: usize) -> DenyCache<Counted, ManualClock> {
    let inner = Counted {
        memory: memory(clock),
        calls: AtomicUsize::new(0),
    };
    DenyCache::with_clock(inner, max, clock.clone())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn an_abusive_client_costs_one_backend_call_per_retry_after() {
    let clock = ManualClock::new();
    let limiter = cached(&clock, 1000);
    let policy = Policy::new("p", [Quota::per_second(10).unwrap()]).unwrap();
    let key = ClientKey::from(1);
    block_on(async {
        for _ in 0..10 {
            assert!(limiter.check(&key, &policy, 1).await.unwrap().allowed);
        }
        // Denied: one token refills in 100 ms.
        let first = limiter.check(&key, &policy, 1).await.unwrap();
        assert_eq!(first.retry_after, Some(Duration::from_millis(100)));
        let calls = limiter.inner().calls.load(Ordering::SeqCst);
        for step in 1..100u64 {
            clock.advance(Duration::from_micros(999)); // 99 ms in all
            let d = limiter.check(&key, &policy, 1).await.unwrap();
            assert!(!d.allowed);
            assert_eq!(
                d.retry_after,
                Some(Duration::from_micros(100_000 - 999 * step))
            );
        }
        assert_eq!(
            limiter.inner().calls.load(Ordering::SeqCst),
            calls,
            "the backend was asked"
        );
        assert_eq!(limiter.hits(), 99);
        clock.advance(Duration::from_millis(2));
        assert!(limiter.check(&key, &policy, 1).await.unwrap().allowed);
    });
}

#[test]
fn the_cache_is_bounded() {
    let clock = ManualClock::new();
    let limiter = cached(&clock, 64);
    let policy = Policy::new("p", [Quota::per_minute(1).unwrap()]).unwrap();
    block_on(async {
        for i in 0..10_000u128 {
            let key = ClientKey::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
            limiter.check(&key, &policy, 1).await.unwrap();
            limiter.check(&key, &policy, 1).await.unwrap();
        }
    });
    assert!(limiter.len() <= 64, "{} denials cached", limiter.len());
}

/// Denies everything, as a fallback standing in for its backend would.
#[derive(Debug)]
struct StandIn(AtomicUsize);

#[async_trait]
impl RateLimiter for StandIn {
    async fn check(&self, _: &ClientKey, _: &Policy, _: u64) -> Result<Decision, Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Decision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_after: Duration::from_secs(60),
            retry_after: Some(Duration::from_secs(60)),
            backend: limiter_core::Backend::Memory,
            degraded: true,
            quota: Some(0),
        })
    }

    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.check(key, policy, cost).await
    }

    async fn refund(&self, _: &ClientKey, _: &Policy, _: u64) -> Result<Decision, Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Decision {
            allowed: true,
            limit: 1,
            remaining: 1,
            reset_after: Duration::ZERO,
            retry_after: None,
            backend: limiter_core::Backend::Memory,
            degraded: true,
            quota: Some(0),
        })
    }
}

#[test]
fn degraded_denials_are_not_cached() {
    let limiter = DenyCache::new(StandIn(AtomicUsize::new(0)), 100);
    let policy = Policy::new("p", [Quota::per_minute(1).unwrap()]).unwrap();
    block_on(async {
        for _ in 0..5 {
            assert!(
                !limiter
                    .check(&ClientKey::from(3), &policy, 1)
                    .await
                    .unwrap()
                    .allowed
            );
        }
    });
    assert_eq!(limiter.inner().0.load(Ordering::SeqCst), 5);
    assert_eq!(limiter.hits(), 0);
}

proptest! {
    /// Any trace of requests, costs and pauses gets the same decisions with and without the
    /// cache in front.
    #[test]
    fn never_changes_a_decision(
        steps in proptest::collection::vec((0u64..3, 1u64..4, 0u64..150_000), 1..300)
    ) {
        let clock = ManualClock::new();
        let plain = memory(&clock);
        let limiter = cached(&clock, 1000);
        let policy = Policy::new("p", [
            Quota::per_second(20).unwrap().allow_burst(5).unwrap(),
            Quota::per_minute(200).unwrap(),
        ]).unwrap();
        block_on(async {
            for (client, cost, pause_us) in steps {
                let key = ClientKey::from(u128::from(client));
                let expected = plain.check(&key, &policy, cost).await.unwrap();
                let got = limiter.check(&key, &policy, cost).await.unwrap();
                prop_assert_eq!(got.allowed, expected.allowed);
                prop_assert_eq!(got.retry_after, expected.retry_after);
                if got.allowed {
                    prop_assert_eq!(got.remaining, expected.remaining);
                } else {
                    // As of the backend's denial: it may have refilled since, not to the cost.
                    prop_assert!(got.remaining <= expected.remaining && expected.remaining < cost);
                }
                clock.advance(Duration::from_micros(pause_us));
            }
            Ok(())
        })?;
    }
}

#[test]
fn a_peek_during_a_cached_denial_is_answered_here() {
    let clock = ManualClock::new();
    let limiter = cached(&clock, 1000);
    let policy = Policy::new("p", [Quota::per_second(10).unwrap()]).unwrap();
    let key = ClientKey::from(11);
    block_on(async {
        assert!(limiter.check(&key, &policy, 10).await.unwrap().allowed);
        let denied = limiter.check(&key, &policy, 1).await.unwrap();
        assert!(!denied.allowed);
        let calls = limiter.inner().calls.load(Ordering::SeqCst);
        clock.advance(Duration::from_millis(30));
        let peeked = limiter.peek(&key, &policy, 1).await.unwrap();
        assert!(!peeked.allowed);
        assert_eq!(peeked.retry_after, Some(Duration::from_millis(70)));
        assert_eq!(limiter.inner().calls.load(Ordering::SeqCst), calls);
        assert_eq!(limiter.hits(), 1);
        // Another cost: the backend's peek, whose denial is then remembered as a check's.
        let two = limiter.peek(&key, &policy, 2).await.unwrap();
        assert_eq!(two.retry_after, Some(Duration::from_millis(170)));
        assert_eq!(limiter.inner().calls.load(Ordering::SeqCst), calls + 1);
        let checked = limiter.check(&key, &policy, 2).await.unwrap();
        assert_eq!(checked, two);
        assert_eq!(limiter.inner().calls.load(Ordering::SeqCst), calls + 1);
        // An allowed peek took nothing: it leaves the cache as it was.
        clock.advance(Duration::from_millis(80));
        assert!(limiter.peek(&key, &policy, 1).await.unwrap().allowed);
        assert!(!limiter.check(&key, &policy, 2).await.unwrap().allowed);
        assert_eq!(limiter.inner().calls.load(Ordering::SeqCst), calls + 2);
    });
}

#[test]
fn a_refund_drops_the_cached_denial_and_reaches_the_backend() {
    let clock = ManualClock::new();
    let limiter = cached(&clock, 1000);
    let policy = Policy::new("p", [Quota::per_second(10).unwrap()]).unwrap();
    let other = Policy::new("q", [Quota::per_second(10).unwrap()]).unwrap();
    let key = ClientKey::from(12);
    block_on(async {
        for p in [&policy, &other] {
            assert!(limiter.check(&key, p, 10).await.unwrap().allowed);
            assert!(!limiter.check(&key, p, 1).await.unwrap().allowed);
        }
        assert_eq!(limiter.len(), 2);
        let calls = limiter.inner().calls.load(Ordering::SeqCst);
        let d = limiter.refund(&key, &policy, 3).await.unwrap();
        assert_eq!((d.allowed, d.remaining), (true, 3));
        assert_eq!(limiter.inner().calls.load(Ordering::SeqCst), calls + 1);
        assert_eq!(limiter.len(), 1, "only that policy's denial is dropped");
        // The tokens given back pass at once, long before the denial's retry_after.
        for _ in 0..3 {
            assert!(limiter.check(&key, &policy, 1).await.unwrap().allowed);
        }
        assert!(!limiter.check(&key, &other, 1).await.unwrap().allowed);
        assert_eq!(
            limiter.hits(),
            1,
            "the other policy's denial still answers here"
        );
    });
}

proptest! {
    /// Peeks and refunds mixed into any trace of checks: every answer is the one the bare
    /// backend gives, and a peek always answers what the check after it does.
    #[test]
    fn peeks_and_refunds_never_change_a_decision(
        steps in proptest::collection::vec((0u64..3, 0u8..3, 1u64..4, 0u64..150_000), 1..300)
    ) {
        let clock = ManualClock::new();
        let plain = memory(&clock);
        let limiter = cached(&clock, 1000);
        let policy = Policy::new("p", [
            Quota::per_second(20).unwrap().allow_burst(5).unwrap(),
            Quota::per_minute(200).unwrap(),
        ]).unwrap();
        block_on(async {
            for (client, op, cost, pause_us) in steps {
                let key = ClientKey::from(u128::from(client));
                let (expected, got) = match op {
                    0 => (
                        plain.check(&key, &policy, cost).await.unwrap(),
                        limiter.check(&key, &policy, cost).await.unwrap(),
                    ),
                    1 => (
                        plain.peek(&key, &policy, cost).await.unwrap(),
                        limiter.peek(&key, &policy, cost).await.unwrap(),
                    ),
                    _ => {
                        let expected = plain.refund(&key, &policy, cost).await.unwrap();
                        let got = limiter.refund(&key, &policy, cost).await.unwrap();
                        prop_assert_eq!(got, expected);
                        continue;
                    }
                };
                prop_assert_eq!(got.allowed, expected.allowed);
                prop_assert_eq!(got.retry_after, expected.retry_after);
                if got.allowed {
                    prop_assert_eq!(got.remaining, expected.remaining);
                } else {
                    prop_assert!(got.remaining <= expected.remaining && expected.remaining < cost);
                }
                clock.advance(Duration::from_micros(pause_us));
            }
            Ok(())
        })?;
    }
}

#[test]
fn check_now_answers_what_needs_no_io_and_nothing_else() {
    let clock = ManualClock::new();
    // `Counted` stands for a remote backend: it has no `check_now` of its own.
    let limiter = cached(&clock, 1000);
    let policy = Policy::new("p", [Quota::per_second(2).unwrap()]).unwrap();
    let key = ClientKey::from(7);
    assert!(
        limiter.check_now(&key, &policy, 1).is_none(),
        "nothing cached yet"
    );
    block_on(async {
        for _ in 0..2 {
            assert!(limiter.check(&key, &policy, 1).await.unwrap().allowed);
        }
        assert!(!limiter.check(&key, &policy, 1).await.unwrap().allowed);
    });
    let calls = limiter.inner().calls.load(Ordering::SeqCst);
    let denied = limiter.check_now(&key, &policy, 1).unwrap().unwrap();
    assert!(!denied.allowed);
    assert_eq!(limiter.inner().calls.load(Ordering::SeqCst), calls);
    // Another cost has another wait: only the backend can say.
    assert!(limiter.check_now(&key, &policy, 2).is_none());

    // Over the memory limiter every check is decided at once, with the effect of `check`.
    let local = DenyCache::with_clock(memory(&clock), 1000, clock.clone());
    for _ in 0..2 {
        assert!(local.check_now(&key, &policy, 1).unwrap().unwrap().allowed);
    }
    let denied = local.check_now(&key, &policy, 1).unwrap().unwrap();
    assert!(!denied.allowed, "the two tokens were taken");
    assert_eq!(local.len(), 1, "the denial is remembered");
    assert!(
        local.check_now(&key, &policy, 0).unwrap().is_err(),
        "bad cost is an error"
    );
}
