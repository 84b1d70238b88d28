//! What the fallback counts, and the state it reports.

use std::sync::atomic::{AtomicU64, Ordering};

use limiter_core::{Error, ErrorKind};

use crate::circuit::{CLOSED, HALF_OPEN};
use serde::{Deserialize, Serialize};

/// Where checks go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Checks go to the primary.
    Closed,
    /// The primary is unavailable: checks get the outage policy, a probe is waiting.
    Open,
    /// One probe is asking the primary; checks still get the outage policy.
    HalfOpen,
    /// Some parts of a partitioned primary's keyspace (a cluster's slots) are unavailable:
    /// their clients get the outage policy, every other client goes to the primary.
    Partial,
}

impl CircuitState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            CLOSED => CircuitState::Closed,
            HALF_OPEN => CircuitState::HalfOpen,
            _ => CircuitState::Open,
        }
    }

    /// `"closed"`, `"open"`, `"half_open"` or `"partial"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Partial => "partial",
        }
    }
}

/// A snapshot of the fallback's state and counters since it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackStats {
    /// Where checks go now.
    pub state: CircuitState,
    /// Checks the primary decided.
    pub primary_decisions: u64,
    /// Checks answered by the outage policy.
    pub degraded_decisions: u64,
    /// Primary calls that failed as unavailable (refused, dropped, Redis not serving).
    pub unavailable_errors: u64,
    /// Primary calls that missed the deadline.
    pub timeouts: u64,
    /// Primary failures of every other kind (refusals such as out of memory or
    /// authentication, bad replies, unreadable buckets), answered by the outage policy.
    pub other_errors: u64,
    /// Primary failures by kind, indexed by [`ErrorKind::index`]: the three counters above
    /// in detail, and the failed probes too (why the primary is still out: a password it no
    /// longer takes, memory still full).
    pub errors_by_kind: [u64; ErrorKind::ALL.len()],
    /// Outages seen: times the circuit opened, and times parts of a partitioned primary
    /// started to open after none was.
    pub opened: u64,
    /// Probes sent while open, successful or not.
    pub probes: u64,
    /// Parts of the primary's keyspace (1 unless partitioned,
    /// [`RateLimiter::partitioning`](limiter_core::RateLimiter::partitioning)).
    pub partitions: u64,
    /// Parts served by the outage policy now: all of them while the circuit is open.
    pub open_partitions: u64,
}

impl FallbackStats {
    /// Primary failures of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors_by_kind[kind.index()]
    }

    /// The share of the keyspace served by the outage policy now, 0.0 to 1.0.
    #[allow(clippy::cast_precision_loss, reason = "a ratio of counts below 2^53")]
    pub fn degraded_share(&self) -> f64 {
        if self.partitions == 0 {
            return 0.0;
        }
        self.open_partitions as f64 / self.partitions as f64
    }
}

/// The counters behind [`FallbackStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) primary_decisions: AtomicU64,
    pub(crate) degraded_decisions: AtomicU64,
    unavailable_errors: AtomicU64,
    timeouts: AtomicU64,
    other_errors: AtomicU64,
    errors_by_kind: [AtomicU64; ErrorKind::ALL.len()],
    pub(crate) opened: AtomicU64,
    pub(crate) probes: AtomicU64,
}

impl Counters {
    /// A failed check of `kind`: counted in its class and by kind.
    pub(crate) fn failure(&self, kind: ErrorKind) {
        match kind {
            ErrorKind::Timeout => &self.timeouts,
            ErrorKind::Unavailable => &self.unavailable_errors,
            _ => &self.other_errors,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.by_kind(kind);
    }

    /// Any failure of `kind`, a check's or a probe's.
    fn by_kind(&self, kind: ErrorKind) {
        self.errors_by_kind[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A probe's result, within its deadline or not: `Ok` if the primary answered, else why
    /// not, counted.
    pub(crate) fn probed(
        &self,
        result: Result<Result<(), Error>, tokio::time::error::Elapsed>,
    ) -> Result<(), String> {
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.by_kind(e.kind());
                Err(e.to_string())
            }
            Err(_) => {
                self.by_kind(ErrorKind::Timeout);
                Err("probe missed the deadline".to_owned())
            }
        }
    }

    /// The counts, with the state and parts the caller read.
    pub(crate) fn snapshot(
        &self,
        state: CircuitState,
        partitions: u64,
        open_partitions: u64,
    ) -> FallbackStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FallbackStats {
            state,
            primary_decisions: load(&self.primary_decisions),
            degraded_decisions: load(&self.degraded_decisions),
            unavailable_errors: load(&self.unavailable_errors),
            timeouts: load(&self.timeouts),
            other_errors: load(&self.other_errors),
            errors_by_kind: std::array::from_fn(|k| load(&self.errors_by_kind[k])),
            opened: load(&self.opened),
            probes: load(&self.probes),
            partitions,
            open_partitions,
        }
    }
}
