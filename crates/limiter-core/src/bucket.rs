//! The token bucket, once, in exact integer arithmetic.
//!
//! # Terms and units
//! - **Time** is whole **microseconds** in a `u64` (`now`): the resolution of Redis's
//!   `TIME`, so the Redis script and the memory backend compute the same numbers. A quota
//!   counts it in **ticks** of [`Quota::tick`] µs: 1 µs for nearly every quota, a coarser
//!   divisor of the period only when the exact form needs too many units (below).
//! - A quota of `tokens` per `period` refills at the rational rate `tokens / period`. With
//!   `ticks = period / tick` and `g = gcd(tokens, ticks)`, one token is
//!   **`unit = ticks / g` units** and the bucket gains **`refill = tokens / g` units per
//!   tick**. Both are integers, so the **level** (units in the bucket) is an integer at every
//!   tick and refill never drifts: after a full drain the n-th token is back at exactly
//!   ⌈n × ticks / tokens⌉ ticks, and every window of one period refills exactly `tokens`.
//! - The **max level** is `capacity × unit` ≤ [`MAX_LEVEL`](crate::MAX_LEVEL) (2^50), so
//!   every intermediate value below stays exact in Lua's doubles as well. The tick is the
//!   smallest divisor of the period that keeps it there (see [`Quota::tick`]). Refill happens
//!   on ticks, and a bucket's stamp falls on the tick at or before the moment it was written,
//!   so a token comes back within one tick of its exact time, early or late; every window of
//!   one period still refills exactly `tokens`.
//!
//! A bucket is stored as two integers, `(level, updated)`: `updated` is in microseconds and
//! always falls on a tick. Its level at `now` is
//! `min(max, level + (ticks(now) − ticks(updated)) × refill)`; time never runs backwards for
//! a bucket (`now < updated` counts as no time passed, and the bucket keeps its later stamp),
//! so a clock that steps back cannot hand out tokens twice. Because the level is a pure
//! function of the stored pair and `now`, a denied check need not write anything: storing
//! the refilled level would change no future decision.
//!
//! Every wait is counted from the bucket's stamp: a bucket stamped later than `now` is full
//! again, and admits a request, that much later. Waits are reported in microseconds from
//! `now`, at most [`MAX_WAIT_US`].
//!
//! A request of `cost` tokens needs `cost × unit` units from **every** quota of its policy:
//! it is admitted only if each bucket holds that much, and then takes it from each. A request
//! denied by one quota consumes from none. `lua/token_bucket.lua` transliterates [`check`].
//!
//! [`peek`] is `check` without the write (a dry run); [`refund`] gives tokens back to every
//! bucket, never above its max level and never moving a stamp back.
//! `lua/adjust.lua` transliterates both.

use crate::{Error, MAX_QUOTAS, MAX_WAIT_US, Quota};

/// The stored state of one bucket: its level in units at time `updated` (µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketState {
    /// Units in the bucket at `updated`.
    pub level: u64,
    /// When `level` was measured, in microseconds of the deciding clock: a multiple of the
    /// quota's [`tick`](Quota::tick).
    pub updated: u64,
}

impl BucketState {
    /// A full bucket at `now`: what a client that was never seen (or whose key expired) has.
    pub fn full(quota: &Quota, now: u64) -> Self {
        Self {
            level: quota.max_level(),
            updated: quota.ticks(now) * quota.tick(),
        }
    }

    /// The level at `now`, refilled and capped at the quota's max level, and the tick it is
    /// measured at: the later of `now`'s and the stamp's.
    #[inline(always)]
    fn at(&self, quota: &Quota, now: u64) -> (u64, u64) {
        self.at_in(quota, quota.tick(), now)
    }

    /// [`at`](Self::at), with the quota's tick given: a constant 1 folds the tick away.
    #[inline(always)]
    fn at_in(&self, quota: &Quota, tick: u64, now: u64) -> (u64, u64) {
        let max = quota.max_level();
        let missing = max.saturating_sub(self.level);
        let (now, stamp) = if tick == 1 {
            (now, self.updated)
        } else {
            (now / tick, self.updated / tick)
        };
        let elapsed = now.saturating_sub(stamp);
        // elapsed × refill ≥ missing ⇔ elapsed ≥ ⌈missing / refill⌉: a multiply, not a
        // division, on the hot path. An overflowing product is certainly ≥ missing.
        let level = match elapsed.checked_mul(quota.refill()) {
            Some(gained) if gained < missing => self.level + gained,
            _ => max,
        };
        (level, now.max(stamp))
    }

    /// The level at `now`, refilled and capped at the quota's max level.
    pub fn level_at(&self, quota: &Quota, now: u64) -> u64 {
        self.at(quota, now).0
    }

    /// Microseconds from `updated` until the bucket is full (saturating): after that,
    /// forgetting it loses nothing.
    pub fn full_after(&self, quota: &Quota) -> u64 {
        let ticks = quota
            .max_level()
            .saturating_sub(self.level)
            .div_ceil(quota.refill());
        ticks.saturating_mul(quota.tick())
    }

    /// The expiry, in milliseconds from `now`, that a store gives this state when it writes
    /// it at `now`: the time until the bucket is full, counted from its own stamp (which may
    /// be later than `now`), rounded up, at most [`MAX_WAIT_US`] rounded up. The Redis
    /// script sets exactly this as the key's `PX`.
    pub fn ttl_ms(&self, quota: &Quota, now: u64) -> u64 {
        let (level, stamp) = self.at(quota, now);
        let missing = quota.max_level() - level;
        until(quota, stamp, missing.div_ceil(quota.refill()), now).div_ceil(1_000)
    }

    /// True when the bucket is full at `now`: its state is worth nothing and may be forgotten.
    pub fn is_full_at(&self, quota: &Quota, now: u64) -> bool {
        self.level_at(quota, now) == quota.max_level()
    }
}

/// Microseconds from `now` until tick `stamp + ticks` of `quota`, at most [`MAX_WAIT_US`];
/// 0 when `ticks` is 0. `stamp` is at or after `now`'s tick, so the result of a positive
/// `ticks` is positive.
#[inline]
fn until(quota: &Quota, stamp: u64, ticks: u64, now: u64) -> u64 {
    until_in(quota.tick(), stamp, ticks, now)
}

/// [`until`], with the quota's tick given: a constant 1 folds the tick away.
#[inline(always)]
fn until_in(tick: u64, stamp: u64, ticks: u64, now: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    if tick == 1 {
        // The common case, in u64: stamp ≥ now, and both are far below 2^63.
        return (stamp - now).saturating_add(ticks).min(MAX_WAIT_US);
    }
    let end = (u128::from(stamp) + u128::from(ticks)) * u128::from(tick);
    let wait = end
        .saturating_sub(u128::from(now))
        .min(u128::from(MAX_WAIT_US));
    // Below MAX_WAIT_US, so it fits.
    u64::try_from(wait).unwrap_or(MAX_WAIT_US)
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
    shape(quotas, states.len())?;

    // Divisions are the costly part of this function, so the allowed path of a one-quota
    // policy does two (tokens left, time to full) and nothing else divides unless needed.
    if let ([q], [s]) = (quotas, &mut *states) {
        return Ok(decide_one(q, s, now, cost));
    }
    let mut measured = Measured::new(quotas, now, cost);
    let mut allowed = true;
    for (i, (q, s)) in quotas.iter().zip(states.iter()).enumerate() {
        (measured.levels[i], measured.stamps[i]) = s.at(q, now);
        // cost ≤ capacity (validated), so cost × unit ≤ max level: no overflow.
        allowed &= measured.levels[i] >= cost * q.unit();
    }
    if allowed {
        measured.take(states);
    }
    Ok(measured.report(allowed))
}

/// What [`check`] would answer for a request of `cost` tokens at `now`, taking nothing: a
/// dry run. The outcome is exactly `check`'s (when admitted, `remaining` counts the tokens
/// left *after* the request; when denied, `retry_after_us` is the same wait), and `states`
/// are only read.
///
/// # Errors
/// As for [`check`].
pub fn peek(
    quotas: &[Quota],
    states: &[BucketState],
    now: u64,
    cost: u64,
) -> Result<Outcome, Error> {
    validate(quotas, cost)?;
    shape(quotas, states.len())?;
    // The same decision by construction: `check` on a copy that is then thrown away.
    let mut copy = [BucketState {
        level: 0,
        updated: 0,
    }; MAX_QUOTAS];
    let copy = &mut copy[..states.len()];
    copy.copy_from_slice(states);
    check(quotas, copy, now, cost)
}

/// Gives `tokens` back to every quota's bucket at `now` (a request that should not count):
/// each bucket's level, measured at `now`, rises by `tokens × unit`, capped at its max
/// level, and is stamped like a check's write (the later of `now`'s tick and its own stamp,
/// so a stamp never moves back).
///
/// The outcome is always allowed, and reports like an admitted check: the quota with the
/// fewest whole tokens left, its `remaining` and `reset_after_us` after the refund. A
/// refund right after an admitted check of the same cost at the same `now` restores every
/// bucket's level exactly; a full bucket stays full (a bucket a store never saw is full, so
/// a refund of it changes nothing).
///
/// # Errors
/// As for [`check`], with `tokens` for the cost: zero tokens, or more than a quota holds,
/// could never have been taken. On error `states` is untouched.
pub fn refund(
    quotas: &[Quota],
    states: &mut [BucketState],
    now: u64,
    tokens: u64,
) -> Result<Outcome, Error> {
    validate(quotas, tokens)?;
    shape(quotas, states.len())?;
    let mut measured = Measured::new(quotas, now, tokens);
    for (i, (q, s)) in quotas.iter().zip(states.iter()).enumerate() {
        (measured.levels[i], measured.stamps[i]) = s.at(q, now);
    }
    measured.give(states);
    Ok(measured.report(true))
}

/// Checks that `states` holds one bucket per quota and that there are at most
/// [`MAX_QUOTAS`] quotas.
#[inline]
fn shape(quotas: &[Quota], states: usize) -> Result<(), Error> {
    if states != quotas.len() {
        return Err(Error::policy(format_args!(
            "{states} bucket states for {} quotas",
            quotas.len()
        )));
    }
    if quotas.len() > MAX_QUOTAS {
        return Err(Error::policy(format_args!(
            "{} quotas, at most {MAX_QUOTAS} allowed",
            quotas.len()
        )));
    }
    Ok(())
}

/// One bucket as a store measured it while deciding a check elsewhere (the Redis script):
/// its level in units, after the cost was taken if the check was admitted, and the tick it
/// is stamped with, the later of `now`'s tick and its stored stamp's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure {
    /// Units in the bucket.
    pub level: u64,
    /// In ticks of the bucket's quota ([`Quota::ticks`]).
    pub stamp: u64,
}

/// The [`Outcome`] of a check of `cost` at `now` that a store decided elsewhere and reported
/// as one [`Measure`] per quota: the figures [`check`] reports, from the same math.
///
/// `None` when the measures cannot be such a decision: not one per quota, a level above
/// what the quota holds (after the cost, if admitted), a stamp before `now`'s tick, or a
/// denial that no quota denies. A caller treats that as a reply it cannot trust.
pub fn outcome_of(
    quotas: &[Quota],
    measures: &[Measure],
    now: u64,
    cost: u64,
    allowed: bool,
) -> Option<Outcome> {
    // Admitted, every bucket gave `need`; denied, at least one lacked it.
    let measured = Measured::of(quotas, measures, now, cost, |q, need, level| {
        level <= q.max_level() - if allowed { need } else { 0 }
    })?;
    let denied = (0..quotas.len()).any(|i| measured.levels[i] < cost * quotas[i].unit());
    if !allowed && !denied {
        return None;
    }
    Some(measured.report(allowed))
}

/// The [`Outcome`] of a [`refund`] of `tokens` at `now` that a store made elsewhere and
/// reported as one [`Measure`] per quota (each bucket after the refund): the figures
/// `refund` reports, from the same math.
///
/// `None` when the measures cannot be such a refund: not one per quota, a level above what
/// the quota holds or below the tokens given back, a stamp before `now`'s tick, or tokens
/// that could never have been taken.
pub fn refund_outcome_of(
    quotas: &[Quota],
    measures: &[Measure],
    now: u64,
    tokens: u64,
) -> Option<Outcome> {
    // A bucket holds at least what it was given back (capped at full, which holds more).
    let measured = Measured::of(quotas, measures, now, tokens, |q, need, level| {
        (need..=q.max_level()).contains(&level)
    })?;
    Some(measured.report(true))
}

/// [`check`] of a one-quota policy, the common case, without the arrays of the general
/// one: small enough to inline into a backend's hot path.
///
/// # Errors
/// As for [`check`].
// Always inlined: it is the whole of an in-memory check's math, and the compiler left it
// out of line once `check` grew (measured: 75 more instructions per check).
#[inline(always)]
pub fn check_one(
    quota: &Quota,
    state: &mut BucketState,
    now: u64,
    cost: u64,
) -> Result<Outcome, Error> {
    validate(std::slice::from_ref(quota), cost)?;
    Ok(decide_one(quota, state, now, cost))
}

#[inline(always)]
fn decide_one(q: &Quota, s: &mut BucketState, now: u64, cost: u64) -> Outcome {
    // Nearly every quota is exact to the microsecond: that path knows its tick is 1.
    if q.tick() == 1 {
        decide_in::<true>(q, s, now, cost)
    } else {
        decide_in::<false>(q, s, now, cost)
    }
}

#[inline(always)]
fn decide_in<const EXACT: bool>(q: &Quota, s: &mut BucketState, now: u64, cost: u64) -> Outcome {
    let tick = if EXACT { 1 } else { q.tick() };
    let (mut level, stamp) = s.at_in(q, tick, now);
    let need = cost * q.unit();
    let allowed = level >= need;
    if allowed {
        level -= need;
        *s = BucketState {
            level,
            updated: stamp * tick,
        };
    }
    let wait = |missing: u64| until_in(tick, stamp, missing.div_ceil(q.refill()), now);
    Outcome {
        allowed,
        quota: 0,
        remaining: level / q.unit(),
        reset_after_us: wait(q.max_level() - level),
        retry_after_us: (!allowed).then(|| wait(need - level)),
    }
}

/// Every bucket of a check, measured at `now`: its level and the tick it is stamped with.
struct Measured<'a> {
    quotas: &'a [Quota],
    levels: [u64; MAX_QUOTAS],
    stamps: [u64; MAX_QUOTAS],
    now: u64,
    cost: u64,
}

impl<'a> Measured<'a> {
    /// Nothing measured yet.
    #[inline]
    fn new(quotas: &'a [Quota], now: u64, cost: u64) -> Self {
        Self {
            quotas,
            levels: [0; MAX_QUOTAS],
            stamps: [0; MAX_QUOTAS],
            now,
            cost,
        }
    }

    /// The buckets a store reported, if there is one per quota, `cost` can ever pass, every
    /// stamp is at or after `now`'s tick and `fits(quota, cost × unit, level)` holds for
    /// each.
    fn of(
        quotas: &'a [Quota],
        measures: &[Measure],
        now: u64,
        cost: u64,
        fits: impl Fn(&Quota, u64, u64) -> bool,
    ) -> Option<Self> {
        if validate(quotas, cost).is_err()
            || quotas.len() > MAX_QUOTAS
            || measures.len() != quotas.len()
        {
            return None;
        }
        let mut measured = Self::new(quotas, now, cost);
        for (i, (q, m)) in quotas.iter().zip(measures).enumerate() {
            if !fits(q, cost * q.unit(), m.level) || m.stamp < q.ticks(now) {
                return None;
            }
            (measured.levels[i], measured.stamps[i]) = (m.level, m.stamp);
        }
        Some(measured)
    }

    /// Microseconds until bucket `i`, at `level`, is full again.
    #[inline]
    fn reset(&self, i: usize, level: u64) -> u64 {
        let q = &self.quotas[i];
        let ticks = (q.max_level() - level).div_ceil(q.refill());
        until(q, self.stamps[i], ticks, self.now)
    }

    /// Takes the cost from every bucket and writes them to `states`.
    #[inline]
    fn take(&mut self, states: &mut [BucketState]) {
        for (i, (q, s)) in self.quotas.iter().zip(states.iter_mut()).enumerate() {
            self.levels[i] -= self.cost * q.unit();
            *s = BucketState {
                level: self.levels[i],
                updated: self.stamps[i] * q.tick(),
            };
        }
    }

    /// Gives the cost back to every bucket, up to its max level, and writes them to
    /// `states`.
    fn give(&mut self, states: &mut [BucketState]) {
        for (i, (q, s)) in self.quotas.iter().zip(states.iter_mut()).enumerate() {
            // Both at most 2^50: no overflow.
            self.levels[i] = (self.levels[i] + self.cost * q.unit()).min(q.max_level());
            *s = BucketState {
                level: self.levels[i],
                updated: self.stamps[i] * q.tick(),
            };
        }
    }

    /// The outcome of an admitted check (the cost already taken) or a denied one, reported
    /// by the quota that matters most.
    #[inline]
    fn report(&self, allowed: bool) -> Outcome {
        let reported = if allowed {
            self.fewest_left()
        } else {
            self.longest_wait()
        };
        self.outcome(allowed, reported)
    }

    /// The quota with the fewest whole tokens left, on a tie the one that takes longest to
    /// fill up.
    #[inline]
    fn fewest_left(&self) -> usize {
        let quotas = self.quotas;
        let key = |i: usize| {
            (
                self.levels[i] / quotas[i].unit(),
                std::cmp::Reverse(self.reset(i, self.levels[i])),
            )
        };
        (0..quotas.len()).min_by_key(|&i| key(i)).unwrap_or(0)
    }

    /// The denying quota that frees up last; on a tie, the first.
    #[inline]
    fn longest_wait(&self) -> usize {
        let mut best = (0, 0);
        for i in 0..self.quotas.len() {
            if let Some(wait) = self.retry(i).filter(|&wait| wait > best.1) {
                best = (i, wait);
            }
        }
        best.0
    }

    /// Microseconds until bucket `i` holds the cost, if it does not now.
    #[inline]
    fn retry(&self, i: usize) -> Option<u64> {
        let q = &self.quotas[i];
        let (need, level) = (self.cost * q.unit(), self.levels[i]);
        (level < need).then(|| {
            until(
                q,
                self.stamps[i],
                (need - level).div_ceil(q.refill()),
                self.now,
            )
        })
    }

    /// The outcome, reported by quota `reported`.
    #[inline]
    fn outcome(&self, allowed: bool, reported: usize) -> Outcome {
        let (q, level) = (&self.quotas[reported], self.levels[reported]);
        Outcome {
            allowed,
            quota: reported,
            remaining: level / q.unit(),
            reset_after_us: self.reset(reported, level),
            retry_after_us: if allowed { None } else { self.retry(reported) },
        }
    }
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
    fn waits_count_from_a_later_stamp() {
        // 10 per second, emptied with a stamp one minute after `now` (a clock that stepped
        // back): nothing refills before the stamp, and the waits and expiry say so.
        let quotas = [q(10, 1_000)];
        let later = 60_000_000;
        let mut s = [BucketState {
            level: 0,
            updated: later,
        }];
        let o = check(&quotas, &mut s, 0, 1).unwrap();
        assert!(!o.allowed);
        assert_eq!(o.retry_after_us, Some(later + 100_000));
        assert_eq!(o.reset_after_us, later + 1_000_000);
        let full = BucketState {
            level: quotas[0].max_level(),
            updated: later,
        };
        let mut s = [full];
        let o = check(&quotas, &mut s, 0, 1).unwrap();
        assert!(o.allowed);
        assert_eq!(s[0].updated, later, "the later stamp is kept");
        assert_eq!(o.reset_after_us, later + 100_000);
        assert_eq!(s[0].ttl_ms(&quotas[0], 0), (later + 100_000) / 1_000);
    }

    #[test]
    fn coarse_ticks_refill_exactly_the_limit_each_period() {
        // 20011 per day does not fit exactly (20011 × 86.4e9 units): ticks of 2 µs.
        let quota = Quota::per_day(20_011).unwrap();
        assert_eq!(quota.tick(), 2);
        let quotas = [quota];
        let day = 86_400_000_000;
        // Start on an odd microsecond, so ticks and `now` disagree.
        let start = 1_000_000_001;
        let mut s = [BucketState::full(&quota, start)];
        assert_eq!(s[0].updated, start - 1, "stamps fall on ticks");
        check(&quotas, &mut s, start, 20_011).unwrap();
        let o = check(&quotas, &mut s, start, 1).unwrap();
        // The first token is back at the first tick at or after its exact time.
        let exact = (day as u128).div_ceil(20_011) as u64;
        let at = (start - 1) + exact.div_ceil(2) * 2;
        assert_eq!(o.retry_after_us, Some(at - start));
        assert!(at - (start - 1) - exact < 2, "at most one tick late");
        assert!(!check(&quotas, &mut s, at - 1, 1).unwrap().allowed);
        assert!(check(&quotas, &mut s, at, 1).unwrap().allowed);
        // Over the day that follows, exactly the limit comes back.
        let mut s = [BucketState {
            level: 0,
            updated: start - 1,
        }];
        assert_eq!(
            s[0].level_at(&quota, start - 1 + day) / quota.unit(),
            20_011
        );
        assert_eq!(
            s[0].level_at(&quota, start - 1 + day - 2) / quota.unit(),
            20_010,
            "not a tick earlier"
        );
        assert!(
            check(&quotas, &mut s, start - 1 + day, 20_011)
                .unwrap()
                .allowed
        );
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

    /// The measures a store reports for a check: each bucket after the cost if admitted,
    /// else as it stands, and its stamp in ticks.
    fn measures(
        quotas: &[Quota],
        before: &[BucketState],
        after: &[BucketState],
        now: u64,
    ) -> Vec<Measure> {
        quotas
            .iter()
            .zip(before.iter().zip(after))
            .map(|(q, (b, a))| {
                let s = if a == b { b } else { a };
                Measure {
                    level: if a == b { b.level_at(q, now) } else { a.level },
                    stamp: (s.updated / q.tick()).max(q.ticks(now)),
                }
            })
            .collect()
    }

    #[test]
    fn outcomes_from_measures_are_what_check_reports() {
        let quotas = [q(5, 1_000), q(6, 60_000), Quota::per_day(20_011).unwrap()];
        let mut s = quotas.map(|q| BucketState::full(&q, 0));
        let mut now = 0;
        for step in 0..40u64 {
            now += step * 37_000;
            let before = s;
            let ours = check(&quotas, &mut s, now, 1 + step % 2).unwrap();
            let m = measures(&quotas, &before, &s, now);
            assert_eq!(
                outcome_of(&quotas, &m, now, 1 + step % 2, ours.allowed),
                Some(ours),
                "step {step}"
            );
        }
        let one = [q(10, 1_000)];
        let mut s = [BucketState::full(&one[0], 0)];
        let before = s;
        let ours = check(&one, &mut s, 5, 3).unwrap();
        let m = measures(&one, &before, &s, 5);
        assert_eq!(outcome_of(&one, &m, 5, 3, true), Some(ours));
    }

    #[test]
    fn measures_no_decision_could_give_are_refused() {
        let quotas = [q(10, 1_000)];
        let (max, unit) = (quotas[0].max_level(), quotas[0].unit());
        let at = |level, stamp| [Measure { level, stamp }];
        assert!(outcome_of(&quotas, &at(max - unit, 7), 7, 1, true).is_some());
        // Admitted, but nothing taken; denied by a bucket that holds the cost.
        assert_eq!(outcome_of(&quotas, &at(max, 7), 7, 1, true), None);
        assert_eq!(outcome_of(&quotas, &at(unit, 7), 7, 1, false), None);
        // More than a full bucket; a stamp before now; a measure per quota missing.
        assert_eq!(outcome_of(&quotas, &at(max + 1, 7), 7, 1, false), None);
        assert_eq!(outcome_of(&quotas, &at(0, 6), 7, 1, false), None);
        assert_eq!(outcome_of(&quotas, &[], 7, 1, false), None);
        // A cost that could never pass.
        assert_eq!(outcome_of(&quotas, &at(0, 7), 7, 11, false), None);
    }

    #[test]
    fn peek_answers_what_check_would_and_takes_nothing() {
        let quotas = [q(10, 1_000)];
        let mut s = [BucketState::full(&quotas[0], 0)];
        for _ in 0..1_000 {
            let o = peek(&quotas, &s, 0, 1).unwrap();
            assert!(o.allowed);
            assert_eq!(o.remaining, 9, "as check reports: the tokens left after");
        }
        assert_eq!(peek(&quotas, &s, 0, 10).unwrap().remaining, 0);
        assert_eq!(s, [BucketState::full(&quotas[0], 0)]);
        check(&quotas, &mut s, 0, 10).unwrap();
        let before = s;
        let peeked = peek(&quotas, &s, 50_000, 1).unwrap();
        let checked = check(&quotas, &mut s, 50_000, 1).unwrap();
        assert_eq!(peeked, checked);
        assert!(!peeked.allowed);
        assert_eq!(peeked.retry_after_us, Some(50_000));
        assert_eq!(s, before, "a denial wrote nothing either way");
        assert!(matches!(peek(&quotas, &s, 0, 0), Err(Error::ZeroCost)));
        assert!(matches!(
            peek(&quotas, &s, 0, 11),
            Err(Error::InsufficientCapacity {
                cost: 11,
                capacity: 10
            })
        ));
        assert!(peek(&quotas, &[], 0, 1).is_err());
    }

    #[test]
    fn a_refund_restores_what_a_check_took() {
        // 5 per second and 6 per minute, at a moment that is not on a token's edge.
        let quotas = [q(5, 1_000), q(6, 60_000)];
        let mut s = quotas.map(|q| BucketState::full(&q, 0));
        check(&quotas, &mut s, 0, 2).unwrap();
        let now = 123_457;
        let before = s;
        let taken = check(&quotas, &mut s, now, 3).unwrap();
        assert!(taken.allowed);
        let given = refund(&quotas, &mut s, now, 3).unwrap();
        for (i, q) in quotas.iter().enumerate() {
            assert_eq!(s[i].level, before[i].level_at(q, now), "quota {i}");
            assert_eq!(s[i].updated, now);
        }
        // The per-second quota has 3 tokens and some back, the minute quota 4: reported is the
        // first, full again 400 ms after the first check took 2.
        assert!(given.allowed);
        assert_eq!((given.quota, given.remaining), (0, 3));
        assert_eq!(given.retry_after_us, None);
        assert_eq!(given.reset_after_us, 400_000 - now);
        // The same decisions follow as if the check had never happened.
        let mut untouched = before;
        for cost in 1..=5 {
            assert_eq!(
                peek(&quotas, &s, now, cost).unwrap(),
                peek(&quotas, &untouched, now, cost).unwrap(),
                "cost {cost}"
            );
        }
        assert_eq!(
            check(&quotas, &mut s, now, 4).unwrap(),
            check(&quotas, &mut untouched, now, 4).unwrap()
        );
    }

    #[test]
    fn a_refund_never_fills_a_bucket_past_full_nor_moves_its_stamp_back() {
        let quotas = [q(10, 1_000)];
        let (max, unit) = (quotas[0].max_level(), quotas[0].unit());
        // Full, or nearly: capped at full.
        let mut s = [BucketState::full(&quotas[0], 0)];
        let o = refund(&quotas, &mut s, 0, 10).unwrap();
        assert_eq!(s[0].level, max);
        assert_eq!((o.remaining, o.reset_after_us), (10, 0));
        let mut s = [BucketState {
            level: max - unit,
            updated: 0,
        }];
        refund(&quotas, &mut s, 0, 5).unwrap();
        assert_eq!(s[0].level, max);
        // Refilled to `now` first: 3 tokens taken, 50 ms later 0.5 is back, and 2 more
        // are given.
        let mut s = [BucketState {
            level: max - 3 * unit,
            updated: 0,
        }];
        let o = refund(&quotas, &mut s, 50_000, 2).unwrap();
        assert_eq!(
            s[0],
            BucketState {
                level: max - unit / 2,
                updated: 50_000
            }
        );
        assert_eq!((o.remaining, o.reset_after_us), (9, 50_000));
        // A stamp later than `now` (a clock that stepped back) is kept, and counts.
        let later = 60_000_000;
        let mut s = [BucketState {
            level: 0,
            updated: later,
        }];
        let o = refund(&quotas, &mut s, 0, 1).unwrap();
        assert_eq!(
            s[0],
            BucketState {
                level: unit,
                updated: later
            }
        );
        assert_eq!(o.reset_after_us, later + 900_000);
    }

    #[test]
    fn bad_refunds_are_errors_and_touch_nothing() {
        let quotas = [q(5, 1_000), q(100, 60_000)];
        let mut s = [BucketState {
            level: 0,
            updated: 0,
        }; 2];
        let before = s;
        assert!(matches!(
            refund(&quotas, &mut s, 0, 0),
            Err(Error::ZeroCost)
        ));
        assert!(matches!(
            refund(&quotas, &mut s, 0, 6),
            Err(Error::InsufficientCapacity {
                cost: 6,
                capacity: 5
            })
        ));
        assert!(refund(&quotas, &mut s[..1], 0, 1).is_err());
        assert!(refund(&[], &mut [], 0, 1).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn refund_outcomes_from_measures_are_what_refund_reports() {
        let quotas = [q(5, 1_000), q(6, 60_000), Quota::per_day(20_011).unwrap()];
        let mut s = quotas.map(|q| BucketState::full(&q, 0));
        check(&quotas, &mut s, 0, 4).unwrap();
        let now = 777_777;
        let ours = refund(&quotas, &mut s, now, 2).unwrap();
        let m: Vec<Measure> = quotas
            .iter()
            .zip(&s)
            .map(|(q, s)| Measure {
                level: s.level,
                stamp: s.updated / q.tick(),
            })
            .collect();
        assert_eq!(refund_outcome_of(&quotas, &m, now, 2), Some(ours));

        let one = [q(10, 1_000)];
        let (max, unit) = (one[0].max_level(), one[0].unit());
        let at = |level, stamp| [Measure { level, stamp }];
        assert!(refund_outcome_of(&one, &at(max, 7), 7, 1).is_some());
        assert!(refund_outcome_of(&one, &at(2 * unit, 7), 7, 2).is_some());
        // Below what was given back; above full; a stamp before now; a measure missing;
        // tokens that could never have been taken.
        assert_eq!(refund_outcome_of(&one, &at(2 * unit - 1, 7), 7, 2), None);
        assert_eq!(refund_outcome_of(&one, &at(max + 1, 7), 7, 1), None);
        assert_eq!(refund_outcome_of(&one, &at(max, 6), 7, 1), None);
        assert_eq!(refund_outcome_of(&one, &[], 7, 1), None);
        assert_eq!(refund_outcome_of(&one, &at(max, 7), 7, 0), None);
        assert_eq!(refund_outcome_of(&one, &at(max, 7), 7, 11), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn quota() -> impl Strategy<Value = Quota> {
            prop_oneof![
                4 => (
                    1u64..=1_000,
                    1u64..=120_000_000,
                    proptest::option::of(1u64..=2_000),
                )
                    .prop_filter_map("a valid quota", |(tokens, period_us, burst)| {
                        let q = Quota::new(tokens, Duration::from_micros(period_us)).ok()?;
                        match burst {
                            Some(b) => q.allow_burst(b).ok(),
                            None => Some(q),
                        }
                    }),
                // Coarse ticks.
                1 => Just(Quota::per_day(20_011).unwrap()),
            ]
        }

        #[derive(Clone, Copy, Debug)]
        enum Op {
            Check,
            Peek,
            Refund,
        }

        /// (µs to advance, sometimes back; operation; tokens, sometimes above capacity).
        fn trace() -> impl Strategy<Value = Vec<(i64, Op, u64)>> {
            let op = prop_oneof![Just(Op::Check), Just(Op::Peek), Just(Op::Refund)];
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just(0i64),
                        0i64..=2_000,
                        0i64..=200_000_000,
                        -5_000_000i64..0
                    ],
                    op,
                    1u64..=2_100,
                ),
                1..80,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Peek answers exactly what check answers, and writes nothing; a refund is
            /// always allowed, never fills past full, never moves a stamp back, gives back
            /// exactly the tokens (capped at full), and reports what its measures say.
            #[test]
            fn peek_check_and_refund_keep_their_contracts(
                quotas in proptest::collection::vec(quota(), 1..=3),
                steps in trace(),
            ) {
                let mut now: u64 = 1_000_000_000;
                let mut states: Vec<BucketState> =
                    quotas.iter().map(|q| BucketState::full(q, now)).collect();
                let smallest = quotas.iter().map(Quota::capacity).min().unwrap();
                for (dt, op, tokens) in steps {
                    now = now.saturating_add_signed(dt);
                    let before = states.clone();
                    match op {
                        Op::Check | Op::Peek => {
                            let peeked = peek(&quotas, &states, now, tokens);
                            prop_assert_eq!(&states, &before, "peek wrote");
                            let checked = if matches!(op, Op::Check) {
                                check(&quotas, &mut states, now, tokens)
                            } else {
                                check(&quotas, &mut states.clone(), now, tokens)
                            };
                            prop_assert_eq!(peeked.is_ok(), checked.is_ok());
                            if let (Ok(p), Ok(c)) = (peeked, checked) {
                                prop_assert_eq!(p, c);
                            }
                        }
                        Op::Refund => {
                            let result = refund(&quotas, &mut states, now, tokens);
                            if tokens > smallest {
                                prop_assert!(result.is_err());
                                prop_assert_eq!(&states, &before, "a bad refund wrote");
                                continue;
                            }
                            let outcome = result.unwrap();
                            prop_assert!(outcome.allowed);
                            prop_assert_eq!(outcome.retry_after_us, None);
                            let mut measures = Vec::new();
                            for (i, q) in quotas.iter().enumerate() {
                                let (b, s) = (before[i], states[i]);
                                let given = b.level_at(q, now) + tokens * q.unit();
                                prop_assert_eq!(s.level, given.min(q.max_level()));
                                prop_assert!(s.updated >= b.updated, "stamp moved back");
                                prop_assert_eq!(s.updated, b.updated.max(q.ticks(now) * q.tick()));
                                measures.push(Measure { level: s.level, stamp: s.updated / q.tick() });
                            }
                            prop_assert_eq!(
                                refund_outcome_of(&quotas, &measures, now, tokens),
                                Some(outcome)
                            );
                        }
                    }
                }
            }

            /// A refund right after an admitted check, at the same instant, restores every
            /// bucket to its level before the check, and every later decision is the one
            /// the check had never been made would give.
            #[test]
            fn a_refund_undoes_an_admitted_check(
                quotas in proptest::collection::vec(quota(), 1..=3),
                warm_up in trace(),
                cost in 1u64..=2_000,
                then in 1u64..=2_000,
                later in 0u64..=100_000_000,
            ) {
                let mut now: u64 = 1_000_000_000;
                let mut states: Vec<BucketState> =
                    quotas.iter().map(|q| BucketState::full(q, now)).collect();
                let smallest = quotas.iter().map(Quota::capacity).min().unwrap();
                for (dt, _, tokens) in warm_up {
                    now = now.saturating_add_signed(dt);
                    let _ = check(&quotas, &mut states, now, tokens);
                }
                let (cost, then) = (cost.min(smallest), then.min(smallest));
                let before = states.clone();
                let taken = check(&quotas, &mut states, now, cost).unwrap();
                prop_assume!(taken.allowed);
                refund(&quotas, &mut states, now, cost).unwrap();
                for (i, q) in quotas.iter().enumerate() {
                    prop_assert_eq!(states[i].level, before[i].level_at(q, now), "quota {}", i);
                }
                let mut untouched = before;
                for at in [now, now + later] {
                    prop_assert_eq!(
                        check(&quotas, &mut states, at, then).unwrap(),
                        check(&quotas, &mut untouched, at, then).unwrap()
                    );
                    prop_assert_eq!(
                        states.iter().zip(&quotas).map(|(s, q)| s.level_at(q, at)).collect::<Vec<_>>(),
                        untouched.iter().zip(&quotas).map(|(s, q)| s.level_at(q, at)).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}
