use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest bucket level, in units, that a quota may need: 2^50.
///
/// The Redis script does the same integer arithmetic in Lua, whose numbers are doubles and
/// exact only up to 2^53; 2^50 leaves room for the sums and products the math forms on the
/// way. See [`crate::bucket`] for the units.
pub const MAX_LEVEL: u64 = 1 << 50;

/// The largest limit or burst of a quota: 2^50 tokens.
pub const MAX_TOKENS: u64 = MAX_LEVEL;

/// The longest period of a quota: 2^50 µs, about 35.7 years.
pub const MAX_PERIOD_US: u64 = 1 << 50;

/// The longest wait a check reports, and the longest expiry a store sets: 2^51 µs, about
/// 71 years. A bucket that takes longer to refill (a burst of 10^9 at one token a week)
/// reports this instead; nothing shorter is ever rounded.
pub const MAX_WAIT_US: u64 = 1 << 51;

/// One token bucket: a capacity (the burst) and a refill rate of `tokens` per `period`.
///
/// Built with the per-period constructors, which reject zero, overflow and meaningless
/// numbers with [`Error::InvalidQuota`] instead of panicking:
///
/// ```
/// use limiter_core::Quota;
/// use std::time::Duration;
///
/// # fn main() -> Result<(), limiter_core::Error> {
/// let q = Quota::per_minute(100)?.allow_burst(20)?;
/// assert_eq!((q.tokens(), q.period(), q.capacity()), (100, Duration::from_secs(60), 20));
///
/// assert!(Quota::per_second(0).is_err());
/// assert!(Quota::new(5, Duration::from_nanos(1_500)).is_err()); // not whole microseconds
///
/// // Every limit and burst up to 2^50 works with every period up to 2^50 µs; a quota whose
/// // exact form needs too many units counts time in coarser ticks (see `tick`).
/// let odd = Quota::per_day(20_011)?;
/// assert_eq!(odd.tick(), 2);
/// # Ok(())
/// # }
/// ```
///
/// In configuration files a quota is written `{ limit = 100, period = "1m", burst = 20 }`
/// (`burst` defaults to `limit`; `period` is a humantime duration such as `"1s"`, `"1h"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "QuotaSpec", into = "QuotaSpec")]
pub struct Quota {
    tokens: u64,
    period_us: u64,
    capacity: u64,
    unit: u64,
    refill: u64,
    tick: u64,
}

impl Quota {
    /// `tokens` per `period`, with a burst of `tokens`.
    ///
    /// # Errors
    /// [`Error::InvalidQuota`] for zero tokens, more than [`MAX_TOKENS`], a period that is
    /// zero, longer than [`MAX_PERIOD_US`] or not whole microseconds.
    pub fn new(tokens: u64, period: Duration) -> Result<Self, Error> {
        if tokens == 0 {
            return Err(Error::quota("limit must be at least 1 token per period"));
        }
        if tokens > MAX_TOKENS {
            return Err(Error::quota(format_args!(
                "limit {tokens} is above the largest, 2^50 tokens per period"
            )));
        }
        if !period.subsec_nanos().is_multiple_of(1_000) {
            return Err(Error::quota(format_args!(
                "period {period:?} is not a whole number of microseconds"
            )));
        }
        let period_us = u64::try_from(period.as_micros())
            .ok()
            .filter(|&p| p <= MAX_PERIOD_US)
            .ok_or_else(|| {
                Error::quota(format_args!(
                    "period {period:?} is longer than the longest, 2^50 µs (about 35 years)"
                ))
            })?;
        if period_us == 0 {
            return Err(Error::quota("period must be at least 1 microsecond"));
        }
        Ok(Self::build(tokens, period_us, tokens))
    }

    /// `tokens` per second.
    pub fn per_second(tokens: u64) -> Result<Self, Error> {
        Self::new(tokens, Duration::from_secs(1))
    }

    /// `tokens` per minute.
    pub fn per_minute(tokens: u64) -> Result<Self, Error> {
        Self::new(tokens, Duration::from_secs(60))
    }

    /// `tokens` per hour.
    pub fn per_hour(tokens: u64) -> Result<Self, Error> {
        Self::new(tokens, Duration::from_secs(3_600))
    }

    /// `tokens` per day.
    pub fn per_day(tokens: u64) -> Result<Self, Error> {
        Self::new(tokens, Duration::from_secs(86_400))
    }

    /// The same rate with a bucket that holds `capacity` tokens: the largest burst.
    ///
    /// # Errors
    /// [`Error::InvalidQuota`] for a zero burst or one above [`MAX_TOKENS`].
    #[must_use = "allow_burst returns a new quota"]
    pub fn allow_burst(self, capacity: u64) -> Result<Self, Error> {
        if capacity == 0 {
            return Err(Error::quota("burst must be at least 1"));
        }
        if capacity > MAX_TOKENS {
            return Err(Error::quota(format_args!(
                "burst {capacity} is above the largest, 2^50 tokens"
            )));
        }
        Ok(Self::build(self.tokens, self.period_us, capacity))
    }

    /// One worker's share of this quota when `workers` share it without coordination (a
    /// fleet that lost Redis): limit and burst divided by `workers`, rounded up, over the
    /// same period. Infallible: a share is never larger than the quota it divides.
    #[must_use]
    pub fn share(&self, workers: NonZeroU32) -> Self {
        let n = u64::from(workers.get());
        Self::build(
            self.tokens.div_ceil(n),
            self.period_us,
            self.capacity.div_ceil(n),
        )
    }

    /// The quota with its representation: exact if it fits, else in the finest ticks that
    /// do. `tokens` and `capacity` are 1 to [`MAX_TOKENS`], `period_us` 1 to
    /// [`MAX_PERIOD_US`], which every caller checked.
    fn build(tokens: u64, period_us: u64, capacity: u64) -> Self {
        let (tick, unit, refill) = represent(tokens, period_us, capacity);
        Self {
            tokens,
            period_us,
            capacity,
            unit,
            refill,
            tick,
        }
    }

    /// Tokens added per [`period`](Self::period).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The refill period.
    pub fn period(&self) -> Duration {
        Duration::from_micros(self.period_us)
    }

    /// The refill period in microseconds.
    pub fn period_micros(&self) -> u64 {
        self.period_us
    }

    /// How many tokens the bucket holds when full: the largest burst.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Units per token (see [`crate::bucket`]): `(period_us / tick) / g`, with
    /// `g = gcd(tokens, period_us / tick)`.
    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// Units the bucket gains per tick: `tokens / g`.
    pub fn refill(&self) -> u64 {
        self.refill
    }

    /// Microseconds per tick, the quota's unit of time: 1 (exact to the microsecond) for
    /// every quota whose full bucket fits in [`MAX_LEVEL`] units that way, else the smallest
    /// divisor of the period that makes it fit. A tick divides the period, so every window
    /// of one period still refills exactly `tokens`; a token comes back on a tick, within
    /// one tick of the exact time.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// The level of a full bucket, in units: `capacity × unit`, at most [`MAX_LEVEL`].
    pub fn max_level(&self) -> u64 {
        // Cannot overflow: `represent` chose a unit that fits.
        self.capacity * self.unit
    }

    /// How long an empty bucket takes to fill up, rounded up to the tick, at most
    /// [`MAX_WAIT_US`].
    pub fn full_refill(&self) -> Duration {
        let ticks = self.max_level().div_ceil(self.refill);
        Duration::from_micros(ticks.saturating_mul(self.tick).min(MAX_WAIT_US))
    }

    /// `us` microseconds as whole ticks of this quota, rounded down.
    #[inline]
    pub fn ticks(&self, us: u64) -> u64 {
        if self.tick == 1 { us } else { us / self.tick }
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quota({self})")
    }
}

/// `100/60s burst 20`: the form used in logs and in the storage key of a bucket.
impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.period_us;
        if p.is_multiple_of(1_000_000) {
            write!(f, "{}/{}s", self.tokens, p / 1_000_000)?;
        } else if p.is_multiple_of(1_000) {
            write!(f, "{}/{}ms", self.tokens, p / 1_000)?;
        } else {
            write!(f, "{}/{}us", self.tokens, p)?;
        }
        if self.capacity != self.tokens {
            write!(f, " burst {}", self.capacity)?;
        }
        Ok(())
    }
}

/// `(tick, unit, refill)` for a quota: exact to the microsecond (`tick` 1) when a full bucket
/// fits in [`MAX_LEVEL`] units, else the smallest tick, among the divisors of the period,
/// that fits. The period itself always does (one tick per period: `unit` 1, a full bucket
/// of `capacity ≤ MAX_LEVEL` units), so this never fails.
///
/// This choice is part of the stored contract: a bucket's level is in the units it gives,
/// so a store keys coarse quotas by their tick too (see `limiter-redis`).
fn represent(tokens: u64, period_us: u64, capacity: u64) -> (u64, u64, u64) {
    let fits = |tick: u64| {
        let ticks = period_us / tick;
        let g = gcd(tokens, ticks);
        let unit = ticks / g;
        capacity
            .checked_mul(unit)
            .is_some_and(|max| max <= MAX_LEVEL)
            .then_some((tick, unit, tokens / g))
    };
    if let Some(exact) = fits(1) {
        return exact;
    }
    divisors(period_us)
        .into_iter()
        .find_map(fits)
        .unwrap_or((period_us, 1, tokens))
}

/// The divisors of `n` made of its prime factors below 1,000 and of what is left once they
/// are divided out (taken as one factor, prime or not), in increasing order: every divisor
/// of the round periods people write, and always 1 and `n`. Deterministic and fast for any
/// `n`: fewer than 500 trial divisions.
fn divisors(mut n: u64) -> Vec<u64> {
    let mut factors: Vec<(u64, u32)> = Vec::new();
    let mut p = 2;
    while p < 1_000 && p * p <= n {
        let mut k = 0;
        while n.is_multiple_of(p) {
            n /= p;
            k += 1;
        }
        if k > 0 {
            factors.push((p, k));
        }
        p += if p == 2 { 1 } else { 2 };
    }
    if n > 1 {
        factors.push((n, 1));
    }
    let mut all = vec![1u64];
    for (p, k) in factors {
        let mut more = Vec::with_capacity(all.len() * k as usize);
        let mut power = 1u64;
        for _ in 0..k {
            power *= p;
            more.extend(all.iter().map(|d| d * power));
        }
        all.extend(more);
    }
    all.sort_unstable();
    all
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The configuration-file form of a [`Quota`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaSpec {
    limit: u64,
    #[serde(with = "humantime_serde")]
    period: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
}

impl TryFrom<QuotaSpec> for Quota {
    type Error = Error;

    fn try_from(spec: QuotaSpec) -> Result<Self, Error> {
        let quota = Quota::new(spec.limit, spec.period)?;
        match spec.burst {
            Some(burst) => quota.allow_burst(burst),
            None => Ok(quota),
        }
    }
}

impl From<Quota> for QuotaSpec {
    fn from(q: Quota) -> Self {
        QuotaSpec {
            limit: q.tokens,
            period: q.period(),
            burst: (q.capacity != q.tokens).then_some(q.capacity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_name_their_period() {
        let cases = [
            (Quota::per_second(7), 1),
            (Quota::per_minute(7), 60),
            (Quota::per_hour(7), 3_600),
            (Quota::per_day(7), 86_400),
        ];
        for (q, secs) in cases {
            let q = q.unwrap();
            assert_eq!(q.period(), Duration::from_secs(secs));
            assert_eq!((q.tokens(), q.capacity()), (7, 7));
        }
    }

    #[test]
    fn rate_is_reduced_exactly() {
        // 1000 per minute: one token every 60 ms = 60 000 µs; gcd(1000, 60e6) = 1000.
        let q = Quota::per_minute(1000).unwrap();
        assert_eq!((q.unit(), q.refill()), (60_000, 1));
        // 3 per second does not divide: 3 units per µs, a token is 1e6 units.
        let q = Quota::per_second(3).unwrap();
        assert_eq!((q.unit(), q.refill()), (1_000_000, 3));
        assert_eq!(q.full_refill(), Duration::from_secs(1));
    }

    #[test]
    fn zero_overflow_and_nonsense_are_errors() {
        let bad = [
            Quota::per_second(0),
            Quota::new(1, Duration::ZERO),
            Quota::new(1, Duration::from_nanos(999)),
            Quota::new(1, Duration::from_nanos(1_001)),
            Quota::new(1, Duration::MAX),
            Quota::per_second(1).and_then(|q| q.allow_burst(0)),
            Quota::per_second(1).and_then(|q| q.allow_burst(u64::MAX)),
            Quota::per_second(1).and_then(|q| q.allow_burst(MAX_TOKENS + 1)),
            Quota::per_second(u64::MAX),
            Quota::per_second(MAX_TOKENS + 1),
            Quota::new(1, Duration::from_micros(MAX_PERIOD_US + 1)),
        ];
        for q in bad {
            let err = q.expect_err("must be rejected");
            assert!(err.is_invalid_input(), "{err}");
        }
    }

    #[test]
    fn large_round_rates_fit() {
        let q = Quota::per_day(1_000_000_000).unwrap();
        assert!(q.max_level() <= MAX_LEVEL);
        let q = Quota::per_second(1_000_000)
            .unwrap()
            .allow_burst(1_000_000_000)
            .unwrap();
        assert!(q.max_level() <= MAX_LEVEL);
    }

    #[test]
    fn quotas_that_used_to_be_refused_count_in_ticks() {
        // The examples of issue 13, and a fleet share of a round quota.
        for (tokens, period, tick) in [
            (20_011, Duration::from_secs(86_400), 2),
            (1_000_003, Duration::from_secs(3_600), 4),
            (666_667, Duration::from_secs(3_600), 3),
            (999_983, Duration::from_secs(86_400), 80),
        ] {
            let q = Quota::new(tokens, period).unwrap();
            assert_eq!(q.tick(), tick, "{q}");
            assert!(q.max_level() <= MAX_LEVEL);
        }
        let premium = Quota::per_hour(2_000_000).unwrap();
        assert_eq!(premium.tick(), 1);
        let share = premium.share(NonZeroU32::new(3).unwrap());
        assert_eq!((share.tokens(), share.capacity()), (666_667, 666_667));
        assert!(share.tick() > 1 && share.max_level() <= MAX_LEVEL);
    }

    #[test]
    fn the_extremes_fit() {
        let week = Duration::from_secs(7 * 86_400);
        for (tokens, burst, period) in [
            (1, 1_000_000_000, week),
            (1_000_000_000, 1_000_000_000, week),
            (999_999_937, 999_999_929, week),
            (1_000_000_000, 1, Duration::from_millis(1)),
            (1, 1_000_000_000, Duration::from_millis(1)),
            (MAX_TOKENS, MAX_TOKENS, Duration::from_micros(MAX_PERIOD_US)),
            // A prime number of microseconds: the only ticks are 1 µs and the period.
            (
                999_999_937,
                1_000_000_000,
                Duration::from_micros(604_799_999_971),
            ),
        ] {
            let q = Quota::new(tokens, period)
                .and_then(|q| q.allow_burst(burst))
                .unwrap();
            assert!(q.period_micros().is_multiple_of(q.tick()), "{q:?}");
            assert!(q.max_level() <= MAX_LEVEL, "{q:?}");
            assert!(q.refill() <= MAX_LEVEL && q.unit() >= 1, "{q:?}");
            // Every window of one period refills exactly `tokens`.
            let ticks = u128::from(q.period_micros() / q.tick());
            assert_eq!(
                ticks * u128::from(q.refill()),
                u128::from(q.tokens()) * u128::from(q.unit()),
                "{q:?}"
            );
        }
    }

    #[test]
    fn divisors_are_every_divisor_of_round_numbers() {
        assert_eq!(divisors(1), [1]);
        assert_eq!(divisors(12), [1, 2, 3, 4, 6, 12]);
        assert_eq!(divisors(604_800_000_000).len(), 14 * 4 * 9 * 2);
        let prime = 604_799_999_971;
        assert_eq!(divisors(prime), [1, prime]);
    }

    #[test]
    fn display_is_compact() {
        assert_eq!(Quota::per_minute(100).unwrap().to_string(), "100/60s");
        let q = Quota::new(5, Duration::from_millis(250))
            .unwrap()
            .allow_burst(9)
            .unwrap();
        assert_eq!(q.to_string(), "5/250ms burst 9");
        assert_eq!(format!("{q:?}"), "Quota(5/250ms burst 9)");
    }
}
