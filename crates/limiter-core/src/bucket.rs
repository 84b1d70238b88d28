//! The token bucket, once, in exact integer arithmetic.
//!
//! # Terms and units
//! - **Time** is whole microseconds in a `u64` (`now`, `updated`): the resolution of Redis's
//!   `TIME`, so the Redis script and the memory backend compute the same numbers.
//! - A quota of `tokens` per `period` µs refills at the rational rate `tokens / period`.
//!   With `g = gcd(tokens, period)`, one token is **`unit = period / g` units** and the bucket
//!   gains **`refill = tokens / g` units per microsecond**. Both are integers, so the
//!   **level** (units in the bucket) is an integer at every instant and refill never drifts:
//!   after a full drain the n-th token is back at exactly ⌈n × period / tokens⌉ µs.
//! - The **max level** is `capacity × unit` ≤ [`MAX_LEVEL`](crate::MAX_LEVEL) (2^50), so
//!   every intermediate value below stays exact in Lua's doubles as well.
//!
//! A bucket is stored as two integers, `(level, updated)`. Its level at `now` is
//! `min(max, level + (now − updated) × refill)`; time never runs backwards for a bucket
//! (`now < updated` counts as no time passed), so a clock that steps back cannot hand out
//! tokens twice. Because the level is a pure function of the stored pair and `now`, a
//! denied check need not write anything: storing the refilled level would change no
//! future decision.
//!
//! A request of `cost` tokens needs `cost × unit` units from **every** quota of its policy:
//! it is admitted only if each bucket holds that much, and then takes it from each. A request
//! denied by one quota consumes from none. `lua/token_bucket.lua` transliterates [`check`].

use crate::{Error, MAX_QUOTAS, Quota};

/// The stored state of one bucket: its level in units at time `updated` (µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketState {
    /// Units in the bucket at `updated`.
    pub level: u64,
    /// When `level` was measured, in microseconds of the deciding clock.
    pub updated: u64,
}

impl BucketState {
    /// A full bucket at `now`: what a client that was never seen (or whose key expired) has.
    pub fn full(quota: &Quota, now: u64) -> Self {
        Self {
            level: quota.max_level(),
            updated: now,
        }
    }

    /// The level at `now`, refilled and capped at the quota's max level.
    pub fn level_at(&self, quota: &Quota, now: u64) -> u64 {
        let max = quota.max_level();
        let missing = max.saturating_sub(self.level);
        let elapsed = now.saturating_sub(self.updated);
        // elapsed × refill ≥ missing ⇔ elapsed ≥ ⌈missing / refill⌉: a multiply, not a
        // division, on the hot path. An overflowing product is certainly ≥ missing.
        match elapsed.checked_mul(quota.refill()) {
            Some(gained) if gained < missing => self.level + gained,
            _ => max,
        }
    }

    /// Microseconds from `updated` until the bucket is full: the expiry of its stored state,
    /// after which forgetting it loses nothing.
    pub fn full_after(&self, quota: &Quota) -> u64 {
        quota
            .max_level()
            .saturating_sub(self.level)
            .div_ceil(quota.refill())
    }

    /// True when the bucket is full at `now`: its state is worth nothing and may be forgotten.
    pub fn is_full_at(&self, quota: &Quota, now: u64) -> bool {
        self.level_at(quota, now) == quota.max_level()
    }
}

/// What [`check`] decided, and the figures of the quota that matters most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the request was admitted (and the tokens taken from every quota).
    pub allowed: bool,
    /// Index in the policy of the quota described below: when allowed, the one with the
    /// fewest tokens left; when denied, the denying quota that frees up last.
    pub quota: usize,
    /// Whole tokens left in that quota's bucket after this request.
    pub remaining: u64,
    /// Microseconds until that bucket is full again.
    pub reset_after_us: u64,
    /// Microseconds until this request would be admitted, when denied: the longest wait
    /// over all denying quotas. `None` when allowed.
    pub retry_after_us: Option<u64>,
}

/// Checks a request of `cost` tokens at `now` against every quota of a policy, all or
/// nothing, updating `states` only when the request is admitted.
///
/// `states[i]` is the bucket of `quotas[i]`; a client seen for the first time starts from
/// [`BucketState::full`].
///
/// # Errors
/// [`Error::ZeroCost`] for a zero cost, [`Error::InsufficientCapacity`] when `cost` exceeds a
/// quota's capacity (it could never pass), and [`Error::InvalidPolicy`] when `quotas` is
/// empty or longer than [`MAX_QUOTAS`], or `states` does not have one state per quota. On error `states` is untouched.
// Inlined across crates: it is the whole of an in-memory check's math.
#[inline]
pub fn check(
    quotas: &[Quota],
    states: &mut [BucketState],
    now: u64,
    cost: u64,
) -> Result<Outcome, Error> {
    validate(quotas, cost)?;
    if states.len() != quotas.len() {
        return Err(Error::policy(format_args!(
            "{} bucket states for {} quotas",
            states.len(),
            quotas.len()
        )));
    }

    if quotas.len() > MAX_QUOTAS {
        return Err(Error::policy(format_args!(
            "{} quotas, at most {MAX_QUOTAS} allowed",
            quotas.len()
        )));
    }

    // Divisions are the costly part of this function, so the allowed path of a one-quota
    // policy does two (tokens left, time to full) and nothing else divides unless needed.
    let mut levels = [0u64; MAX_QUOTAS];
    let mut allowed = true;
    for ((q, s), level) in quotas.iter().zip(states.iter()).zip(levels.iter_mut()) {
        *level = s.level_at(q, now);
        // cost ≤ capacity (validated), so cost × unit ≤ max level: no overflow.
        allowed &= *level >= cost * q.unit();
    }
    let levels = &mut levels[..quotas.len()];

    let reported = if allowed {
        for ((q, s), level) in quotas.iter().zip(states.iter_mut()).zip(levels.iter_mut()) {
            *level -= cost * q.unit();
            *s = BucketState {
                level: *level,
                updated: now.max(s.updated),
            };
        }
        // The quota with the fewest whole tokens left; on a tie, the one that takes longest
        // to fill up.
        let mut best = 0;
        if quotas.len() > 1 {
            let key = |i: usize| {
                let q = &quotas[i];
                let missing = q.max_level() - levels[i];
                (
                    levels[i] / q.unit(),
                    std::cmp::Reverse(missing.div_ceil(q.refill())),
                )
            };
            best = (0..quotas.len()).min_by_key(|&i| key(i)).unwrap_or(0);
        }
        best
    } else {
        // The denying quota that frees up last; on a tie, the first.
        let mut best = (0, 0);
        for (i, (q, &level)) in quotas.iter().zip(levels.iter()).enumerate() {
            let need = cost * q.unit();
            if level < need {
                let wait = (need - level).div_ceil(q.refill());
                if wait > best.1 || best.1 == 0 {
                    best = (i, wait);
                }
            }
        }
        best.0
    };

    let q = &quotas[reported];
    let level = levels[reported];
    let retry_after_us = (!allowed).then(|| (cost * q.unit() - level).div_ceil(q.refill()));
    let reset_after_us = (q.max_level() - level).div_ceil(q.refill());
    Ok(Outcome {
        allowed,
        quota: reported,
        remaining: level / q.unit(),
        reset_after_us,
        retry_after_us,
    })
}

/// Checks that `cost` can ever pass under `quotas`, without looking at any state.
///
/// # Errors
/// As for [`check`].
pub fn validate(quotas: &[Quota], cost: u64) -> Result<(), Error> {
    if cost == 0 {
        return Err(Error::ZeroCost);
    }
    let Some(smallest) = quotas.iter().map(Quota::capacity).min() else {
        return Err(Error::policy("a limited policy needs at least one quota"));
    };
    if cost > smallest {
        return Err(Error::InsufficientCapacity {
            cost,
            capacity: smallest,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn q(tokens: u64, period_ms: u64) -> Quota {
        Quota::new(tokens, Duration::from_millis(period_ms)).unwrap()
    }

    #[test]
    fn drains_then_denies_with_retry_after() {
        let quotas = [q(10, 1_000)];
        let mut s = [BucketState::full(&quotas[0], 0)];
        for left in (0..10).rev() {
            let o = check(&quotas, &mut s, 0, 1).unwrap();
            assert!(o.allowed);
            assert_eq!(o.remaining, left);
            assert_eq!(o.retry_after_us, None);
        }
        let o = check(&quotas, &mut s, 0, 1).unwrap();
        assert!(!o.allowed);
        assert_eq!(o.retry_after_us, Some(100_000));
        assert_eq!(o.reset_after_us, 1_000_000);
        // Denial wrote nothing.
        assert_eq!(
            s[0],
            BucketState {
                level: 0,
                updated: 0
            }
        );
    }

    #[test]
    fn nth_token_returns_exactly_at_n_over_rate() {
        // 3 per second: the n-th token is back at ceil(n × 1e6 / 3) µs, no drift.
        let quotas = [Quota::per_second(3).unwrap()];
        let mut s = [BucketState::full(&quotas[0], 0)];
        check(&quotas, &mut s, 0, 3).unwrap();
        for (n, at) in [(1u64, 333_334u64), (2, 666_667), (3, 1_000_000)] {
            let level = s[0].level_at(&quotas[0], at - 1);
            assert_eq!(level / quotas[0].unit(), n - 1, "token {n} early");
            let level = s[0].level_at(&quotas[0], at);
            assert_eq!(level / quotas[0].unit(), n, "token {n} late");
        }
    }

    #[test]
    fn all_or_nothing_across_quotas() {
        // 5 per second and 6 per minute: the minute quota runs out first.
        let quotas = [q(5, 1_000), q(6, 60_000)];
        let mut s = quotas.map(|q| BucketState::full(&q, 0));
        for _ in 0..5 {
            assert!(check(&quotas, &mut s, 0, 1).unwrap().allowed);
        }
        // Second quota still has 1, first has 0: denied by the first, nothing taken.
        let before = s;
        let o = check(&quotas, &mut s, 0, 1).unwrap();
        assert!(!o.allowed);
        assert_eq!(o.quota, 0);
        assert_eq!(s, before);
        // One second later the first refilled; the minute quota has 1 left.
        let o = check(&quotas, &mut s, 1_000_000, 2).unwrap();
        assert!(!o.allowed);
        assert_eq!(o.quota, 1, "the minute quota denies cost 2");
        assert_eq!(s, before, "a denial by one quota consumes from none");
        let o = check(&quotas, &mut s, 1_000_000, 1).unwrap();
        assert!(o.allowed);
        assert_eq!((o.quota, o.remaining), (1, 0));
    }

    #[test]
    fn time_never_runs_backwards_for_a_bucket() {
        let quotas = [q(1, 1_000)];
        let mut s = [BucketState::full(&quotas[0], 5_000_000)];
        assert!(check(&quotas, &mut s, 5_000_000, 1).unwrap().allowed);
        // A clock that stepped back a minute must not see a refilled bucket.
        let o = check(&quotas, &mut s, 4_000_000, 1).unwrap();
        assert!(!o.allowed);
        let o = check(&quotas, &mut s, 0, 1).unwrap();
        assert!(!o.allowed);
        assert_eq!(s[0].updated, 5_000_000);
    }

    #[test]
    fn long_idle_does_not_overflow() {
        let quotas = [Quota::per_second(1_000_000)
            .unwrap()
            .allow_burst(1_000_000_000)
            .unwrap()];
        let s = BucketState {
            level: 0,
            updated: 0,
        };
        assert_eq!(s.level_at(&quotas[0], u64::MAX), quotas[0].max_level());
        assert!(s.is_full_at(&quotas[0], u64::MAX));
    }

    #[test]
    fn bad_costs_are_errors_and_touch_nothing() {
        let quotas = [q(5, 1_000), q(100, 60_000)];
        let mut s = quotas.map(|q| BucketState::full(&q, 0));
        let before = s;
        assert!(matches!(check(&quotas, &mut s, 0, 0), Err(Error::ZeroCost)));
        assert!(matches!(
            check(&quotas, &mut s, 0, 6),
            Err(Error::InsufficientCapacity {
                cost: 6,
                capacity: 5
            })
        ));
        assert!(check(&quotas, &mut s, 0, u64::MAX).is_err());
        assert!(check(&quotas, &mut s[..1], 0, 1).is_err());
        assert!(check(&[], &mut [], 0, 1).is_err());
        assert_eq!(s, before);
    }
}
