use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic source of time for in-process limiters: the time elapsed since the clock's
/// own origin. Redis decisions never use it; they read Redis's `TIME`.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since the clock's origin. Never decreases.
    fn now(&self) -> Duration;

    /// [`now`](Self::now) in whole microseconds, the unit of [`crate::bucket`].
    fn now_micros(&self) -> u64 {
        // u64 microseconds last 584 000 years; saturate rather than wrap past that.
        u64::try_from(self.now().as_micros()).unwrap_or(u64::MAX)
    }
}

/// The real clock: monotonic time since the clock was made.
///
/// It reads the CPU's time-stamp counter through [`quanta`] where that is stable, about
/// twice as fast as `std::time::Instant` on the machines we measured, and falls back to
/// the OS's monotonic clock where it is not.
#[derive(Clone, Debug)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    origin: quanta::Instant,
    /// The origin as the raw counter, for [`Clock::now_micros`].
    origin_raw: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin_raw = clock.raw();
        let origin = clock.scaled(origin_raw);
        Self {
            clock,
            origin,
            origin_raw,
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.origin)
    }

    /// The raw counter's distance from the origin, scaled to nanoseconds once: no
    /// `Duration` on the way (this runs on every in-memory check).
    #[inline]
    fn now_micros(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin_raw, self.clock.raw()) / 1_000
    }
}

/// A clock that moves only when told to, for deterministic tests. Clones share the same time.
///
/// ```
/// use limiter_core::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let handle = clock.clone();
/// handle.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), Duration::from_millis(1500));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (saturating at about 584 years).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update never fails when the closure always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Moves the clock to `to`, if that is not earlier than now: time never runs backwards.
    pub fn set(&self, to: Duration) {
        let to = u64::try_from(to.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_max(to, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_only_moves_forward() {
        let c = ManualClock::new();
        c.set(Duration::from_secs(5));
        c.set(Duration::from_secs(3));
        assert_eq!(c.now(), Duration::from_secs(5));
        c.advance(Duration::from_micros(7));
        assert_eq!(c.now_micros(), 5_000_007);
        c.advance(Duration::MAX);
        assert_eq!(c.now(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let c = MonotonicClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }

    #[test]
    fn monotonic_micros_agree_with_now_and_follow_real_time() {
        let c = MonotonicClock::new();
        let wall = std::time::Instant::now();
        let first = c.now_micros();
        let mut last = first;
        for _ in 0..1000 {
            let m = c.now_micros();
            assert!(m >= last, "went back from {last} to {m}");
            last = m;
        }
        std::thread::sleep(Duration::from_millis(20));
        let (before, micros, after) = (c.now(), c.now_micros(), c.now());
        assert!(
            before.as_micros() <= u128::from(micros) + 1,
            "{before:?} vs {micros} µs"
        );
        assert!(
            u128::from(micros) <= after.as_micros() + 1,
            "{micros} µs vs {after:?}"
        );
        let elapsed = micros - first;
        let real = u64::try_from(wall.elapsed().as_micros()).unwrap_or(u64::MAX);
        assert!(
            (20_000..=real + 1_000).contains(&elapsed),
            "{elapsed} µs over {real} µs"
        );
    }
}
