//! Peeks and refunds through the fallback: to the primary while the circuit is closed, to
//! the outage policy (memory, on this worker's share) otherwise, every failure classified
//! as a check's: an outage opens the circuit, one unreadable bucket answers locally and
//! leaves it closed, bad input is the caller's error. Scripted primary, tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use limiter_core::{Backend, Decision, ErrorKind, Policy, Quota, RateLimiter};
use limiter_fallback::{CircuitState, FallbackConfig, OutagePolicy};
use support::{BROKEN, DOWN, HANG, KEY, UNREADABLE, config, policy, setup};

#[tokio::test(start_paused = true)]
async fn a_closed_circuit_peeks_and_refunds_on_the_primary() {
    let (fallback, primary) = setup(config());
    let peeked = fallback.peek(&KEY, &policy(), 1).await.unwrap();
    let refunded = fallback.refund(&KEY, &policy(), 1).await.unwrap();
    for d in [peeked, refunded] {
        assert_eq!(
            (d.backend, d.degraded, d.allowed),
            (Backend::Redis, false, true)
        );
    }
    assert_eq!(primary.peeks.load(Ordering::SeqCst), 1);
    assert_eq!(primary.refunds.load(Ordering::SeqCst), 1);
    assert_eq!(primary.checks.load(Ordering::SeqCst), 0);
    let stats = fallback.stats();
    assert_eq!(fallback.state(), CircuitState::Closed);
    assert_eq!(
        (stats.primary_decisions, stats.degraded_decisions),
        (0, 0),
        "peeks and refunds are not checks"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_peek_or_refund_opens_the_circuit_like_a_check() {
    for (mode, kind) in [
        (DOWN, ErrorKind::Unavailable),
        (BROKEN, ErrorKind::OutOfMemory),
        (HANG, ErrorKind::Timeout),
    ] {
        for refund in [false, true] {
            let (fallback, primary) = setup(config());
            primary.set(mode);
            let started = tokio::time::Instant::now();
            let d = if refund {
                fallback.refund(&KEY, &policy(), 1).await.unwrap()
            } else {
                fallback.peek(&KEY, &policy(), 1).await.unwrap()
            };
            assert!(
                started.elapsed() <= Duration::from_millis(50),
                "past the deadline"
            );
            assert_eq!(
                (d.backend, d.degraded, d.allowed),
                (Backend::Memory, true, true)
            );
            assert_eq!(
                fallback.state(),
                CircuitState::Open,
                "{kind:?}, refund {refund}"
            );
            let stats = fallback.stats();
            assert_eq!((stats.opened, stats.errors(kind)), (1, 1), "{kind:?}");
            // Open: nothing more reaches the primary.
            for _ in 0..10 {
                assert!(fallback.peek(&KEY, &policy(), 1).await.unwrap().degraded);
                assert!(fallback.refund(&KEY, &policy(), 1).await.unwrap().degraded);
                assert!(fallback.check(&KEY, &policy(), 1).await.unwrap().degraded);
            }
            let calls = primary.peeks.load(Ordering::SeqCst)
                + primary.refunds.load(Ordering::SeqCst)
                + primary.checks.load(Ordering::SeqCst);
            assert_eq!(calls, 1, "an open circuit called the primary");
            assert_eq!(fallback.stats().degraded_decisions, 10, "only checks count");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_bucket_answers_locally_and_leaves_the_circuit_closed() {
    let (fallback, primary) = setup(config());
    primary.set(UNREADABLE);
    let peeked = fallback.peek(&KEY, &policy(), 1).await.unwrap();
    let refunded = fallback.refund(&KEY, &policy(), 1).await.unwrap();
    for d in [peeked, refunded] {
        assert_eq!((d.backend, d.degraded), (Backend::Memory, true));
    }
    assert_eq!(fallback.state(), CircuitState::Closed);
    assert_eq!(fallback.stats().errors(ErrorKind::Bucket), 2);
    assert!(fallback.peek(&KEY, &policy(), 1).await.unwrap().degraded);
    assert_eq!(primary.peeks.load(Ordering::SeqCst), 2, "still asked");
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_the_callers_error_and_unlimited_touches_nothing() {
    let (fallback, primary) = setup(config());
    for cost in [0, 101] {
        let peek = fallback.peek(&KEY, &policy(), cost).await.unwrap_err();
        let refund = fallback.refund(&KEY, &policy(), cost).await.unwrap_err();
        assert!(peek.is_invalid_input() && refund.is_invalid_input());
    }
    let unlimited = Policy::unlimited("admin").unwrap();
    assert_eq!(
        fallback.peek(&KEY, &unlimited, 1).await.unwrap(),
        Decision::unlimited()
    );
    assert_eq!(
        fallback.refund(&KEY, &unlimited, 1).await.unwrap(),
        Decision::unlimited()
    );
    assert_eq!(
        primary.peeks.load(Ordering::SeqCst) + primary.refunds.load(Ordering::SeqCst),
        0
    );
    assert_eq!(fallback.state(), CircuitState::Closed);
}

/// In an outage memory counts this worker's share; a peek answers from it and a refund
/// gives back to it, at most the share's burst.
#[tokio::test(start_paused = true)]
async fn an_open_circuit_peeks_and_refunds_in_memory_on_the_share() {
    let (fallback, primary) = setup(FallbackConfig {
        expected_workers: 4,
        ..config()
    });
    primary.set(DOWN);
    let policy = Policy::new("p", [Quota::per_minute(100).unwrap()]).unwrap();
    // The share is 25: take 20 of it.
    let d = fallback.check(&KEY, &policy, 20).await.unwrap();
    assert_eq!((d.degraded, d.limit, d.remaining), (true, 25, 5));
    let peeked = fallback.peek(&KEY, &policy, 5).await.unwrap();
    assert_eq!((peeked.allowed, peeked.remaining), (true, 0));
    assert!(!fallback.peek(&KEY, &policy, 6).await.unwrap().allowed);
    // A peek of more than the share holds, as a check: memory's denial, not an error.
    let beyond = fallback.peek(&KEY, &policy, 60).await.unwrap();
    let checked = fallback.check(&KEY, &policy, 60).await.unwrap();
    assert_eq!(beyond, checked);
    assert!(!beyond.allowed);
    // Give 10 back: 15 left. A refund of the policy's whole burst fills the share.
    let d = fallback.refund(&KEY, &policy, 10).await.unwrap();
    assert_eq!((d.allowed, d.degraded, d.remaining), (true, true, 15));
    let d = fallback.refund(&KEY, &policy, 100).await.unwrap();
    assert_eq!((d.remaining, d.limit), (25, 25));
    assert!(fallback.check(&KEY, &policy, 25).await.unwrap().allowed);
}

#[tokio::test(start_paused = true)]
async fn the_other_outage_policies_peek_as_they_check_and_count_nothing() {
    for (outage, allowed) in [(OutagePolicy::Allow, true), (OutagePolicy::Deny, false)] {
        let (fallback, primary) = setup(FallbackConfig { outage, ..config() });
        primary.set(DOWN);
        let checked = fallback.check(&KEY, &policy(), 1).await.unwrap();
        let peeked = fallback.peek(&KEY, &policy(), 1).await.unwrap();
        assert_eq!(peeked, checked, "{outage:?}");
        assert_eq!(peeked.allowed, allowed);
        let refunded = fallback.refund(&KEY, &policy(), 1).await.unwrap();
        assert_eq!(
            (refunded.allowed, refunded.degraded, refunded.backend),
            (true, true, Backend::None)
        );
        assert_eq!(refunded.remaining, refunded.limit, "nothing was counted");
    }
}
