use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest bucket level, in units, that a quota may need: 2^50.
///
/// The Redis script does the same integer arithmetic in Lua, whose numbers are doubles and
/// exact only up to 2^53; 2^50 leaves room for the sums and products the math forms on the
/// way. See [`crate::bucket`] for the units.
pub const MAX_LEVEL: u64 = 1 << 50;

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
}

impl Quota {
    /// `tokens` per `period`, with a burst of `tokens`.
    pub fn new(tokens: u64, period: Duration) -> Result<Self, Error> {
        if tokens == 0 {
            return Err(Error::quota("limit must be at least 1 token per period"));
        }
        if !period.subsec_nanos().is_multiple_of(1_000) {
            return Err(Error::quota(format_args!(
                "period {period:?} is not a whole number of microseconds"
            )));
        }
        let period_us = u64::try_from(period.as_micros())
            .map_err(|_| Error::quota(format_args!("period {period:?} is too long")))?;
        if period_us == 0 {
            return Err(Error::quota("period must be at least 1 microsecond"));
        }
        let g = gcd(tokens, period_us);
        Self::build(tokens, period_us, tokens, period_us / g, tokens / g)
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
    #[must_use = "allow_burst returns a new quota"]
    pub fn allow_burst(self, capacity: u64) -> Result<Self, Error> {
        if capacity == 0 {
            return Err(Error::quota("burst must be at least 1"));
        }
        Self::build(
            self.tokens,
            self.period_us,
            capacity,
            self.unit,
            self.refill,
        )
    }

    fn build(
        tokens: u64,
        period_us: u64,
        capacity: u64,
        unit: u64,
        refill: u64,
    ) -> Result<Self, Error> {
        match capacity.checked_mul(unit) {
            Some(level) if level <= MAX_LEVEL => Ok(Self {
                tokens,
                period_us,
                capacity,
                unit,
                refill,
            }),
            _ => Err(Error::quota(format_args!(
                "burst {capacity} at {tokens} per {period_us} µs needs more than 2^50 units \
                 of precision; use a smaller burst or a rounder rate"
            ))),
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

    /// Units per token (see [`crate::bucket`]): `period_us / gcd(tokens, period_us)`.
    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// Units the bucket gains per microsecond: `tokens / gcd(tokens, period_us)`.
    pub fn refill(&self) -> u64 {
        self.refill
    }

    /// The level of a full bucket, in units: `capacity × unit`, at most [`MAX_LEVEL`].
    pub fn max_level(&self) -> u64 {
        // Cannot overflow: `build` checked it.
        self.capacity * self.unit
    }

    /// How long an empty bucket takes to fill up, rounded up to the microsecond.
    pub fn full_refill(&self) -> Duration {
        Duration::from_micros(self.max_level().div_ceil(self.refill))
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
            Quota::per_day(999_983), // prime per day: 999_983 × 86.4e9 units
            Quota::per_second(u64::MAX),
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
