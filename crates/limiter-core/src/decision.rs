use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Quota;
use crate::bucket::Outcome;

/// `d` in whole milliseconds, rounded up: a caller told to wait that long is never early.
pub fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// `d` in whole seconds, rounded up: a caller told to wait that long is never early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Which backend made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    /// No backend: the policy is unlimited, or an outage policy answered without one.
    None,
    /// The in-process limiter.
    Memory,
    /// Redis, shared by every worker.
    Redis,
}

impl Backend {
    /// `"none"`, `"memory"` or `"redis"`, as in the HTTP API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::Memory => "memory",
            Backend::Redis => "redis",
        }
    }
}

/// The answer to one check. A denial is a decision, not an error.
///
/// The figures describe one quota of the policy (`quota` is its index): when allowed, the
/// one with the fewest tokens left; when denied, the denying quota that frees up last, so
/// `retry_after` is the true wait for the whole policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the request may proceed. When true its cost has been taken.
    pub allowed: bool,
    /// Capacity (largest burst) of the reported quota's bucket.
    pub limit: u64,
    /// Whole tokens left in that bucket after this request.
    pub remaining: u64,
    /// Time until that bucket is full again.
    pub reset_after: Duration,
    /// When denied: how long until the same request would be admitted. `None` when allowed.
    pub retry_after: Option<Duration>,
    /// Which backend decided.
    pub backend: Backend,
    /// True when the deciding backend stood in for an unavailable one (fallback mode).
    pub degraded: bool,
    /// Index of the reported quota in the policy; `None` for an unlimited policy.
    pub quota: Option<usize>,
}

impl Decision {
    /// The decision for an unlimited policy: allowed, with no backend consulted.
    pub fn unlimited() -> Self {
        Decision {
            allowed: true,
            limit: u64::MAX,
            remaining: u64::MAX,
            reset_after: Duration::ZERO,
            retry_after: None,
            backend: Backend::None,
            degraded: false,
            quota: None,
        }
    }

    /// The decision for a [`bucket::check`](crate::bucket::check) outcome over `quotas`.
    #[inline]
    pub fn from_outcome(outcome: &Outcome, quotas: &[Quota], backend: Backend) -> Self {
        Decision {
            allowed: outcome.allowed,
            limit: quotas.get(outcome.quota).map_or(0, Quota::capacity),
            remaining: outcome.remaining,
            reset_after: Duration::from_micros(outcome.reset_after_us),
            retry_after: outcome.retry_after_us.map(Duration::from_micros),
            backend,
            degraded: false,
            quota: Some(outcome.quota),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ceil_millis(Duration::ZERO), 0);
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(2_000)), 2);
        assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    }
}
