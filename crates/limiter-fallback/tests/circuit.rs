//! The circuit breaker's state machine, without Docker: a scripted primary that answers,
//! fails, hangs or breaks on command, on tokio's paused clock so deadlines are exact.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use limiter_core::{Backend, ClientKey, ErrorKind, RateLimiter};
use limiter_fallback::{CircuitState, Fallback, FallbackConfig, OutagePolicy};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use support::{BROKEN, DOWN, HANG, KEY, Scripted, UNREADABLE, UP, config, policy, setup};

#[tokio::test(start_paused = true)]
async fn closed_circuit_uses_the_primary() {
    let (fallback, primary) = setup(config());
    let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert_eq!((d.backend, d.degraded), (Backend::Redis, false));
    assert_eq!(primary.checks.load(Ordering::SeqCst), 1);
    assert_eq!(fallback.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_outage_opens_the_circuit_and_open_means_no_primary_calls() {
    let (fallback, primary) = setup(config());
    primary.set(DOWN);
    let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert_eq!(
        (d.backend, d.degraded, d.allowed),
        (Backend::Memory, true, true)
    );
    assert_eq!(fallback.state(), CircuitState::Open);
    for _ in 0..50 {
        assert!(fallback.check(&KEY, &policy(), 1).await.unwrap().degraded);
    }
    assert_eq!(
        primary.checks.load(Ordering::SeqCst),
        1,
        "an open circuit called the primary"
    );
    let stats = fallback.stats();
    assert_eq!(
        (
            stats.opened,
            stats.unavailable_errors,
            stats.degraded_decisions
        ),
        (1, 1, 51)
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_primary_costs_one_deadline_then_nothing() {
    let (fallback, primary) = setup(config());
    primary.set(HANG);
    let started = tokio::time::Instant::now();
    let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(50),
        "waited past the deadline"
    );
    assert!(d.degraded);
    assert_eq!(fallback.state(), CircuitState::Open);
    let started = tokio::time::Instant::now();
    fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "an open circuit waited on the primary"
    );
    assert_eq!(fallback.stats().timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn one_probe_per_interval_closes_the_circuit_when_the_primary_answers() {
    let (fallback, primary) = setup(config());
    primary.set(DOWN);
    fallback.check(&KEY, &policy(), 1).await.unwrap();
    // Still down at the first probe: stays open.
    tokio::time::sleep(Duration::from_millis(1_010)).await;
    assert_eq!(primary.pings.load(Ordering::SeqCst), 1);
    assert_eq!(fallback.state(), CircuitState::Open);
    // Back up: the second probe closes it, within two intervals of the first failure.
    primary.set(UP);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(primary.pings.load(Ordering::SeqCst), 2);
    assert_eq!(fallback.state(), CircuitState::Closed);
    let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert_eq!((d.backend, d.degraded), (Backend::Redis, false));
    // No more probes once closed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(primary.pings.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_one_probe_through_and_checks_stay_local() {
    let (fallback, primary) = setup(config());
    primary.set(HANG);
    fallback.check(&KEY, &policy(), 1).await.unwrap();
    // The probe starts after one interval and hangs until its deadline.
    tokio::time::sleep(Duration::from_millis(1_010)).await;
    assert_eq!(fallback.state(), CircuitState::HalfOpen);
    for _ in 0..100 {
        let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
        assert!(d.degraded);
    }
    assert_eq!(primary.pings.load(Ordering::SeqCst), 1, "a herd of probes");
    assert_eq!(
        primary.checks.load(Ordering::SeqCst),
        1,
        "checks reached the primary while half-open"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        fallback.state(),
        CircuitState::Open,
        "a probe past its deadline reopens"
    );
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_answers_with_errors_is_an_outage() {
    // Redis at maxmemory (OOM on every write): it answers, but cannot decide. Limiting must
    // go on from memory, never stop.
    let (fallback, primary) = setup(config());
    primary.set(BROKEN);
    let limit = policy().quotas()[0].capacity();
    let mut admitted = 0;
    for _ in 0..limit + 50 {
        let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
        assert_eq!((d.backend, d.degraded), (Backend::Memory, true));
        admitted += u64::from(d.allowed);
    }
    assert_eq!(admitted, limit, "limited from memory, not served unlimited");
    assert_eq!(fallback.state(), CircuitState::Open);
    let stats = fallback.stats();
    assert_eq!((stats.opened, stats.other_errors), (1, 1));
    assert_eq!(stats.errors(ErrorKind::OutOfMemory), 1);
    assert_eq!(primary.checks.load(Ordering::SeqCst), 1);
    // The probe finds it still refusing, then answering.
    tokio::time::sleep(Duration::from_millis(1_010)).await;
    assert_eq!(fallback.state(), CircuitState::Open);
    primary.set(UP);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(fallback.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_refusing_primary_found_at_start_opens_the_circuit() {
    let (fallback, primary) = setup(config());
    primary.set(BROKEN);
    let err = fallback.warm_up().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfMemory);
    assert_eq!(fallback.state(), CircuitState::Open);
    assert!(fallback.check(&KEY, &policy(), 1).await.unwrap().degraded);
    assert_eq!(primary.checks.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn one_unreadable_bucket_is_answered_locally_without_opening() {
    let (fallback, primary) = setup(config());
    primary.set(UNREADABLE);
    let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert_eq!((d.backend, d.degraded), (Backend::Memory, true));
    assert_eq!(
        fallback.state(),
        CircuitState::Closed,
        "one check, not an outage"
    );
    assert_eq!(fallback.stats().errors(ErrorKind::Bucket), 1);
    primary.set(UP);
    let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert_eq!((d.backend, d.degraded), (Backend::Redis, false));
}

#[tokio::test(start_paused = true)]
async fn outage_policies_allow_and_deny() {
    for (outage, allowed) in [(OutagePolicy::Allow, true), (OutagePolicy::Deny, false)] {
        let (fallback, primary) = setup(FallbackConfig { outage, ..config() });
        primary.set(DOWN);
        for _ in 0..300 {
            let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
            assert_eq!(
                (d.allowed, d.degraded, d.backend),
                (allowed, true, Backend::None)
            );
            if !allowed {
                assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_fleet_that_grew_divides_by_its_live_size_never_below_the_floor() {
    let (fallback, primary) = setup(FallbackConfig {
        expected_workers: 2,
        ..config()
    });
    // Membership saw five workers before the outage.
    fallback.set_fleet_size(5);
    assert_eq!(fallback.fleet_size(), 5);
    primary.set(DOWN);
    let mut allowed = 0;
    for _ in 0..200 {
        allowed += u32::from(fallback.check(&KEY, &policy(), 1).await.unwrap().allowed);
    }
    assert_eq!(allowed, 20, "⌈100 / 5⌉ per worker");
    // A smaller fleet seen than the floor: the floor divides.
    fallback.set_fleet_size(1);
    assert_eq!(fallback.fleet_size(), 2);
    let mut allowed = 0;
    for _ in 0..200 {
        allowed += u32::from(
            fallback
                .check(&ClientKey::from(77), &policy(), 1)
                .await
                .unwrap()
                .allowed,
        );
    }
    assert_eq!(allowed, 50, "⌈100 / 2⌉ per worker");
}

#[tokio::test(start_paused = true)]
async fn in_fallback_each_worker_enforces_its_share() {
    let (fallback, primary) = setup(FallbackConfig {
        expected_workers: 3,
        ..config()
    });
    primary.set(DOWN);
    let mut allowed = 0;
    for _ in 0..200 {
        allowed += u32::from(fallback.check(&KEY, &policy(), 1).await.unwrap().allowed);
    }
    assert_eq!(allowed, 34, "⌈100 / 3⌉ per worker");
    // A cost that fits the global quota but not the share is a denial, not an error.
    let d = fallback
        .check(&ClientKey::from(9), &policy(), 50)
        .await
        .unwrap();
    assert!(!d.allowed && d.degraded);
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_an_error_in_every_state() {
    let (fallback, primary) = setup(config());
    assert!(
        fallback
            .check(&KEY, &policy(), 0)
            .await
            .unwrap_err()
            .is_invalid_input()
    );
    primary.set(DOWN);
    fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert!(
        fallback
            .check(&KEY, &policy(), 101)
            .await
            .unwrap_err()
            .is_insufficient_capacity()
    );
    assert_eq!(
        primary.checks.load(Ordering::SeqCst),
        1,
        "bad input reached the primary"
    );
}

#[test]
fn nonsense_settings_are_refused() {
    let local = || MemoryLimiter::new(MemoryConfig::default()).unwrap();
    let primary = Arc::new(Scripted::default());
    for config in [
        FallbackConfig {
            deadline: Duration::ZERO,
            ..config()
        },
        FallbackConfig {
            probe_interval: Duration::ZERO,
            ..config()
        },
        FallbackConfig {
            expected_workers: 0,
            ..config()
        },
    ] {
        assert!(
            Fallback::new(primary.clone(), local(), config)
                .unwrap_err()
                .is_invalid_input()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn warm_up_opens_the_circuit_before_any_check_when_the_primary_is_down() {
    let timeout = Duration::from_millis(500);
    let with_timeout = FallbackConfig {
        warm_up: timeout,
        ..config()
    };
    let (fallback, _) = setup(with_timeout);
    fallback.warm_up().await.unwrap();
    assert_eq!(fallback.state(), CircuitState::Closed);

    let (fallback, primary_down) = setup(with_timeout);
    primary_down.set(HANG);
    let started = tokio::time::Instant::now();
    assert!(fallback.warm_up().await.unwrap_err().is_timeout());
    assert_eq!(
        started.elapsed(),
        timeout,
        "warm-up waits its timeout at most"
    );
    assert_eq!(fallback.state(), CircuitState::Open);
    let d = fallback.check(&KEY, &policy(), 1).await.unwrap();
    assert!(d.degraded);
    assert_eq!(primary_down.checks.load(Ordering::SeqCst), 0);
    assert_eq!(fallback.stats().opened, 1);

    // The probe finds it back as usual.
    primary_down.set(UP);
    tokio::time::sleep(config().probe_interval + Duration::from_millis(1)).await;
    assert_eq!(fallback.state(), CircuitState::Closed);
}
