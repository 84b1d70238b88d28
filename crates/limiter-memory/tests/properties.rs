//! Property tests: the limiter against an independent model in exact rational arithmetic.
//!
//! The model keeps each bucket as a rational number of tokens, `num / period_us`, in u128
//! without reducing anything, and refills it by `elapsed × tokens`. A request fits when
//! `cost × period_us ≤ num` for every quota.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test loudly"
)]

use std::time::Duration;

use limiter_core::{Clock, ManualClock, Policy, Quota};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Model {
    quota: Quota,
    num: u128,
}

impl Model {
    fn new(quota: Quota) -> Self {
        let num = u128::from(quota.capacity()) * u128::from(quota.period_micros());
        Self { quota, num }
    }

    fn refill(&mut self, elapsed_us: u64) {
        let max = u128::from(self.quota.capacity()) * u128::from(self.quota.period_micros());
        self.num = max.min(self.num + u128::from(elapsed_us) * u128::from(self.quota.tokens()));
    }

    fn fits(&self, cost: u64) -> bool {
        u128::from(cost) * u128::from(self.quota.period_micros()) <= self.num
    }

    fn take(&mut self, cost: u64) {
        self.num -= u128::from(cost) * u128::from(self.quota.period_micros());
    }

    fn whole_tokens(&self) -> u64 {
        (self.num / u128::from(self.quota.period_micros())) as u64
    }
}

fn quota() -> impl Strategy<Value = Quota> {
    (
        1u64..=1_000,
        1u64..=120_000_000,
        proptest::option::of(1u64..=2_000),
    )
        .prop_filter_map(
            "quota exceeds the 2^50 precision bound",
            |(tokens, period_us, burst)| {
                let q = Quota::new(tokens, Duration::from_micros(period_us)).ok()?;
                match burst {
                    Some(b) => q.allow_burst(b).ok(),
                    None => Some(q),
                }
            },
        )
}

/// (microseconds to advance, cost) pairs; costs sometimes above capacity on purpose.
fn trace() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..=2_000, 0u64..=200_000_000],
            1u64..=2_100,
        ),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Decisions equal the model's exactly: admitted iff the request fits every quota, with
    /// the same tokens left; a denial takes nothing from any quota.
    #[test]
    fn decisions_match_the_exact_model(
        quotas in proptest::collection::vec(quota(), 1..=3),
        steps in trace(),
    ) {
        let clock = ManualClock::new();
        let limiter = MemoryLimiter::with_clock(MemoryConfig { max_buckets: 4 }, clock.clone()).unwrap();
        let policy = Policy::new("prop", quotas.clone()).unwrap();
        let mut models: Vec<Model> = quotas.iter().copied().map(Model::new).collect();
        let smallest = quotas.iter().map(Quota::capacity).min().unwrap();
        let key = 9u128.into();

        for (dt, cost) in steps {
            clock.advance(Duration::from_micros(dt));
            for m in &mut models { m.refill(dt); }
            let result = limiter.check_sync(&key, &policy, cost);
            if cost > smallest {
                let err = result.unwrap_err();
                prop_assert!(err.is_insufficient_capacity(), "{}", err);
                continue;
            }
            let d = result.unwrap();
            let fits = models.iter().all(|m| m.fits(cost));
            prop_assert_eq!(d.allowed, fits, "cost {} at {:?}", cost, clock.now());
            if fits {
                for m in &mut models { m.take(cost); }
                let fewest = models.iter().map(Model::whole_tokens).min().unwrap();
                prop_assert_eq!(d.remaining, fewest);
                prop_assert_eq!(d.retry_after, None);
            } else {
                prop_assert!(d.retry_after.is_some());
            }
        }
    }

    /// Over every window of the trace, the admitted cost never exceeds
    /// capacity + ⌊window × rate⌋, and a denied request admitted after exactly
    /// `retry_after` (not one microsecond sooner).
    #[test]
    fn never_admits_more_than_capacity_plus_refill(q in quota(), steps in trace()) {
        let clock = ManualClock::new();
        let limiter = MemoryLimiter::with_clock(MemoryConfig { max_buckets: 4 }, clock.clone()).unwrap();
        let policy = Policy::new("prop", [q]).unwrap();
        let key = 5u128.into();
        let mut admitted: Vec<(u64, u64)> = Vec::new(); // (time µs, cost)

        for (dt, cost) in steps {
            clock.advance(Duration::from_micros(dt));
            let cost = cost.min(q.capacity());
            let now = clock.now_micros();
            let d = limiter.check_sync(&key, &policy, cost).unwrap();
            if d.allowed {
                admitted.push((now, cost));
            } else {
                let wait = d.retry_after.unwrap();
                prop_assert!(wait > Duration::ZERO);
                // One µs early is still a denial...
                if wait > Duration::from_micros(1) {
                    clock.advance(wait - Duration::from_micros(1));
                    prop_assert!(!limiter.check_sync(&key, &policy, cost).unwrap().allowed);
                    clock.advance(Duration::from_micros(1));
                } else {
                    clock.advance(wait);
                }
                // ...and exactly on time it passes.
                let now = clock.now_micros();
                prop_assert!(limiter.check_sync(&key, &policy, cost).unwrap().allowed);
                admitted.push((now, cost));
            }
        }

        for i in 0..admitted.len() {
            let mut sum = 0u128;
            for &(t, cost) in &admitted[i..] {
                sum += u128::from(cost);
                let window = u128::from(t - admitted[i].0);
                let bound = u128::from(q.capacity())
                    + window * u128::from(q.tokens()) / u128::from(q.period_micros());
                prop_assert!(sum <= bound, "{} admitted in {} µs, bound {}", sum, window, bound);
            }
        }
    }
}
