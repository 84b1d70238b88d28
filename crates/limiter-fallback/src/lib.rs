//! Redis first; the in-process limiter when Redis is unreachable or slow; back to Redis when
//! it heals. Callers never see the outage as an error.
//!
//! ```no_run
//! use limiter_core::{ClientKeyHasher, RateLimiter, Tier, TierPolicies};
//! use limiter_fallback::{Fallback, FallbackConfig};
//! use limiter_memory::{MemoryConfig, MemoryLimiter};
//! use limiter_redis::{RedisConfig, RedisLimiter};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), limiter_core::Error> {
//! let limiter = Fallback::new(
//!     RedisLimiter::new(RedisConfig::from_url("redis://127.0.0.1:6379"))?,
//!     MemoryLimiter::new(MemoryConfig::default())?,
//!     FallbackConfig { expected_workers: 3, ..FallbackConfig::default() },
//! )?;
//! let key = ClientKeyHasher::new(b"a deployment secret of 16+ bytes")?.hash("203.0.113.9");
//! let decision = limiter.check(&key, TierPolicies::default().get(Tier::Anonymous), 1).await?;
//! if decision.degraded {
//!     // Redis is down: decided in this process, on this worker's share of the limit.
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Semantics
//! - **Deadline.** Every call to the primary (Redis) is bounded by
//!   [`FallbackConfig::deadline`] (default 50 ms), pool wait, connect and reply included. A
//!   call that misses it, or fails in any way that is not the caller's fault, is answered by
//!   the outage policy at once and **opens the circuit**: unreachable, but also a Redis that
//!   answers with errors (out of memory, writes stopped, a password it no longer takes, a
//!   permission missing, a reply of the wrong shape). A primary that cannot decide never
//!   switches limiting off.
//! - **Open.** No check waits on the primary: each is answered by the outage policy. A
//!   background probe pings the primary every [`FallbackConfig::probe_interval`] (default
//!   1 s); for the probe the circuit is **half-open**, and checks still go to the outage
//!   policy, so exactly one request reaches Redis, never a herd. When the probe succeeds
//!   within the deadline the circuit **closes** and the next check goes to Redis.
//! - **Outage policy.** [`OutagePolicy::Fallback`] (default) decides in memory,
//!   [`OutagePolicy::Allow`] admits everything (fail open), [`OutagePolicy::Deny`] refuses
//!   everything (fail closed). Every such decision has `degraded == true`.
//! - **Fleet share.** In memory each worker enforces its share of every quota,
//!   `⌈limit / expected_workers⌉` (burst likewise, [`Policy::share`]), so the fleet stays
//!   near the global limit instead of multiplying it by the number of workers. A share
//!   always builds; [`Fallback::prepare`] computes it ahead for the policies known at
//!   start-up.
//! - **What a switch loses.** Buckets start full in memory when the circuit opens, and what
//!   was counted in memory is not copied back to Redis when it closes: the two stores use
//!   different clocks, and merging counts from many workers would need a coordination the
//!   outage just made impossible. A client can therefore get up to one extra burst (its share
//!   in memory) around each switch.
//! - **Parts of the keyspace.** A primary whose keyspace fails in parts (a Redis Cluster: a
//!   master and its hash slots) says so through [`RateLimiter::partitions`]. The fallback
//!   then keeps one circuit per part: a client whose slot's master is unreachable is served
//!   by the outage policy while every other client stays on the primary, and one probe task
//!   pings, each interval, one slot of every run of open slots, closing the run when it
//!   answers. The state is then [`CircuitState::Partial`] while some parts are open, and
//!   [`FallbackStats::open_partitions`] says how many.
//! - **What is not an outage.** Invalid input (a zero cost, a cost above a quota's burst) is
//!   returned to the caller. A failure confined to one check ([`Error::is_per_check`]: a
//!   bucket key holding something else) answers that check by the outage policy and leaves
//!   the circuit closed. Every failure is counted by its [`ErrorKind`] and logged.
//!
//! Every transition is a `tracing` event (target `limiter_fallback`) with its reason, and
//! [`Fallback::stats`] reads the state and counters for metrics and health checks.
//!
//! Checks must run inside a Tokio runtime: the deadline is a Tokio timer and the probe a
//! Tokio task.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use limiter_core::{
    Backend, ClientKey, Decision, Error, ErrorKind, Policy, Quota, RateLimiter, bucket,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// What to answer while the primary is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutagePolicy {
    /// Decide in the in-process limiter, on this worker's share of each quota.
    #[default]
    Fallback,
    /// Admit every request (fail open).
    Allow,
    /// Refuse every request (fail closed), asking to retry after one probe interval.
    Deny,
}

/// Settings of a [`Fallback`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// Longest wait for the primary on any check. Default 50 ms. In config files:
    /// `deadline_ms`.
    #[serde(rename = "deadline_ms", with = "millis")]
    pub deadline: Duration,
    /// How often an open circuit probes the primary. Default 1 s. In config files:
    /// `probe_interval_ms`.
    #[serde(rename = "probe_interval_ms", with = "millis")]
    pub probe_interval: Duration,
    /// What to answer while the primary is unavailable. Default `fallback`.
    pub outage: OutagePolicy,
    /// Workers sharing the limit; in fallback each enforces `⌈limit / expected_workers⌉`.
    /// Default 1.
    pub expected_workers: u32,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            probe_interval: Duration::from_secs(1),
            outage: OutagePolicy::Fallback,
            expected_workers: 1,
        }
    }
}

/// Durations in config files as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

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
    fn from_u8(v: u8) -> Self {
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

/// Fleet-share policies kept before the cache starts over.
const MAX_CACHED_SHARES: usize = 1_024;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

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
    /// Parts of the primary's keyspace ([`RateLimiter::partitions`]; 1 unless partitioned).
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

/// Redis (or any primary) first, a local limiter when it is unavailable. See the
/// [crate docs](crate).
pub struct Fallback<P, L> {
    inner: Arc<Inner<P, L>>,
}

struct Inner<P, L> {
    primary: P,
    local: L,
    config: FallbackConfig,
    state: AtomicU8,
    /// Fleet-share policies by the id of the policy they scale.
    shares: RwLock<HashMap<u64, Arc<Policy>>>,
    primary_decisions: AtomicU64,
    degraded_decisions: AtomicU64,
    unavailable_errors: AtomicU64,
    timeouts: AtomicU64,
    other_errors: AtomicU64,
    errors_by_kind: [AtomicU64; ErrorKind::ALL.len()],
    opened: AtomicU64,
    probes: AtomicU64,
    /// One circuit per part of a partitioned primary (`true` = open); empty otherwise.
    parts: Box<[AtomicBool]>,
    open_parts: AtomicUsize,
    /// Whether the parts' probe task was started (it then runs for the fallback's life).
    parts_probe_started: AtomicBool,
    /// Wakes the parts' probe when a part opens.
    parts_wake: Arc<tokio::sync::Notify>,
}

impl<P, L> Drop for Inner<P, L> {
    fn drop(&mut self) {
        // Lets the parts' probe see the fallback is gone and end.
        self.parts_wake.notify_one();
    }
}

impl<P, L> Fallback<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    /// Wraps `primary` (Redis) with `local` (usually a `MemoryLimiter`) for outages.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero deadline, probe interval or worker count.
    pub fn new(primary: P, local: L, config: FallbackConfig) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidConfig {
            reason: reason.to_owned(),
        };
        if config.deadline.is_zero() {
            return Err(invalid("fallback deadline must be above zero"));
        }
        if config.probe_interval.is_zero() {
            return Err(invalid("fallback probe_interval must be above zero"));
        }
        if config.expected_workers == 0 {
            return Err(invalid("fallback expected_workers must be at least 1"));
        }
        let partitions = primary.partitions();
        let parts = if partitions > 1 {
            (0..partitions).map(|_| AtomicBool::new(false)).collect()
        } else {
            Box::default()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                primary,
                local,
                config,
                state: AtomicU8::new(CLOSED),
                shares: RwLock::new(HashMap::new()),
                primary_decisions: AtomicU64::new(0),
                degraded_decisions: AtomicU64::new(0),
                unavailable_errors: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                other_errors: AtomicU64::new(0),
                errors_by_kind: Default::default(),
                opened: AtomicU64::new(0),
                probes: AtomicU64::new(0),
                parts,
                open_parts: AtomicUsize::new(0),
                parts_probe_started: AtomicBool::new(false),
                parts_wake: Arc::new(tokio::sync::Notify::new()),
            }),
        })
    }

    /// Where checks go now.
    pub fn state(&self) -> CircuitState {
        let whole = CircuitState::from_u8(self.inner.state.load(Ordering::Acquire));
        if whole == CircuitState::Closed && self.inner.open_part_count() > 0 {
            return CircuitState::Partial;
        }
        whole
    }

    /// The state and counters, for metrics and health checks.
    pub fn stats(&self) -> FallbackStats {
        let i = &self.inner;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FallbackStats {
            state: self.state(),
            primary_decisions: load(&i.primary_decisions),
            degraded_decisions: load(&i.degraded_decisions),
            unavailable_errors: load(&i.unavailable_errors),
            timeouts: load(&i.timeouts),
            other_errors: load(&i.other_errors),
            errors_by_kind: std::array::from_fn(|k| load(&i.errors_by_kind[k])),
            opened: load(&i.opened),
            probes: load(&i.probes),
            partitions: i.parts.len().max(1) as u64,
            open_partitions: if i.state.load(Ordering::Acquire) == CLOSED {
                i.open_part_count() as u64
            } else {
                i.parts.len().max(1) as u64
            },
        }
    }

    /// Asks the primary once, within `timeout`, before any check does (the primary's
    /// `ping`, which for Redis opens every connection and runs the script once: give it
    /// longer than one check's deadline). If it cannot decide, the circuit opens now: the
    /// first checks go straight to the outage policy instead of each finding out, and the
    /// probe starts looking for the primary. A partitioned primary (a cluster) opens no
    /// circuit here: one master down says nothing of the others, and each part opens on its
    /// own first failure.
    ///
    /// # Errors
    /// Why the primary could not decide (the fallback serves meanwhile).
    pub async fn warm_up(&self, timeout: Duration) -> Result<(), Error> {
        let inner = &self.inner;
        let error = match tokio::time::timeout(timeout, inner.primary.ping()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.is_invalid_input() => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => Error::Timeout {
                backend: "primary",
                after: timeout,
            },
        };
        inner.count(error.kind());
        if inner.parts.is_empty() {
            inner.open(&error);
        }
        Err(error)
    }

    /// Computes this worker's share of `policy` now, so that no check computes it later:
    /// for the policies known at start-up (a server's tiers). Never needed for correctness.
    pub fn prepare(&self, policy: &Policy) {
        if !policy.is_unlimited() {
            drop(self.inner.share(policy));
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &FallbackConfig {
        &self.inner.config
    }

    /// The primary limiter.
    pub fn primary(&self) -> &P {
        &self.inner.primary
    }

    /// The local limiter.
    pub fn local(&self) -> &L {
        &self.inner.local
    }
}

impl<P, L> Inner<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    /// Closed → open, once per outage: the caller that wins starts the probe.
    fn open(self: &Arc<Self>, reason: &dyn fmt::Display) {
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "limiter_fallback",
                from = "closed",
                to = "open",
                %reason,
                outage_policy = ?self.config.outage,
                "primary unavailable: answering by the outage policy"
            );
            tokio::spawn(probe(Arc::downgrade(self)));
        }
    }

    /// Part `p` closed → open: its clients go to the outage policy, and the parts' probe is
    /// woken. If `p` does not answer a ping either, the parts that live with it (its
    /// master's other slots) open too, so their clients do not each wait out a deadline.
    fn open_part(self: &Arc<Self>, p: usize, reason: &dyn fmt::Display) {
        if p >= self.parts.len() {
            return self.open(reason);
        }
        if !self.open_parts_in(p..p + 1) {
            return; // already open
        }
        tracing::warn!(
            target: "limiter_fallback",
            to = "partial",
            %reason,
            partition = p,
            outage_policy = ?self.config.outage,
            "part of the primary's keyspace unavailable: its clients answered by the outage policy"
        );
        let inner = Arc::downgrade(self);
        let wait = self.config.probe_interval.max(self.config.deadline);
        tokio::spawn(async move {
            let Some(this) = inner.upgrade() else { return };
            // A call that missed the deadline may have been stalled, not refused: look again
            // before sending a whole master's clients away. Answered within the deadline, it
            // was a stall: the part closes at once instead of after a probe interval.
            let asked = std::time::Instant::now();
            if let Ok(Ok(())) = tokio::time::timeout(wait, this.primary.ping_partition(p)).await {
                if asked.elapsed() <= this.config.deadline {
                    this.close_parts(p..p + 1);
                    tracing::info!(target: "limiter_fallback", partition = p, "part answered at once: back on the primary");
                }
                return;
            }
            for run in this.primary.colocated(p).await {
                let end = run.end.min(this.parts.len());
                this.open_parts_in(run.start.min(end)..end);
            }
        });
    }

    /// Opens the closed parts among `range`; true if any was. The first part to open after
    /// none was counts as an outage, and wakes the parts' probe.
    fn open_parts_in(self: &Arc<Self>, range: std::ops::Range<usize>) -> bool {
        let mut opened = 0;
        for part in &self.parts[range] {
            // Counted before it shows, so the count never drops below what is shown open.
            self.open_parts.fetch_add(1, Ordering::SeqCst);
            if part.swap(true, Ordering::SeqCst) {
                self.open_parts.fetch_sub(1, Ordering::SeqCst);
            } else {
                opened += 1;
            }
        }
        if opened == 0 {
            return false;
        }
        if self.open_parts.load(Ordering::SeqCst) == opened {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        if !self.parts_probe_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(probe_parts(
                Arc::downgrade(self),
                Arc::clone(&self.parts_wake),
            ));
        }
        self.parts_wake.notify_one();
        true
    }

    /// Closes the open parts among `range`, which answered a probe.
    fn close_parts(&self, range: std::ops::Range<usize>) {
        for part in &self.parts[range] {
            if part.swap(false, Ordering::SeqCst) {
                self.open_parts.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Parts open now, at most all of them.
    fn open_part_count(&self) -> usize {
        self.open_parts.load(Ordering::SeqCst).min(self.parts.len())
    }

    /// The runs of consecutive open parts now.
    fn open_runs(&self) -> Vec<std::ops::Range<usize>> {
        let mut runs = Vec::new();
        let mut start = None;
        for (i, part) in self.parts.iter().enumerate() {
            match (part.load(Ordering::Acquire), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    runs.push(s..i);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push(s..self.parts.len());
        }
        runs
    }

    async fn degraded(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Result<Decision, Error> {
        self.degraded_decisions.fetch_add(1, Ordering::Relaxed);
        let mut decision = match self.config.outage {
            OutagePolicy::Fallback => {
                let share = self.share(policy);
                match self.local.check(key, &share, cost).await {
                    Ok(d) => d,
                    // The cost fits the global quota (checked before) but not this worker's
                    // share of it: memory denies it for now rather than fail a valid request.
                    Err(e) if e.is_insufficient_capacity() => self.beyond_share(&share, cost),
                    Err(e) => return Err(e),
                }
            }
            OutagePolicy::Allow => {
                let refusal = self.refusal(policy);
                // Nothing was counted: report the bucket as full rather than empty.
                Decision {
                    allowed: true,
                    remaining: refusal.limit,
                    reset_after: Duration::ZERO,
                    retry_after: None,
                    ..refusal
                }
            }
            OutagePolicy::Deny => self.refusal(policy),
        };
        decision.degraded = true;
        Ok(decision)
    }

    /// Memory's denial of a cost larger than this worker's share of a quota can hold: it
    /// cannot pass here until the primary is back, so retry after one probe interval.
    fn beyond_share(&self, share: &Policy, cost: u64) -> Decision {
        let quotas = share.quotas();
        let quota = quotas.iter().position(|q| q.capacity() < cost).unwrap_or(0);
        Decision {
            allowed: false,
            limit: quotas.get(quota).map_or(0, Quota::capacity),
            remaining: 0,
            reset_after: self.config.probe_interval,
            retry_after: Some(self.config.probe_interval),
            backend: Backend::Memory,
            degraded: true,
            quota: Some(quota),
        }
    }

    /// A denial without a backend: retry after one probe interval.
    fn refusal(&self, policy: &Policy) -> Decision {
        let limit = policy.quotas().first().map_or(0, Quota::capacity);
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after: self.config.probe_interval,
            retry_after: Some(self.config.probe_interval),
            backend: Backend::None,
            degraded: true,
            quota: Some(0),
        }
    }

    /// This worker's share of `policy` ([`Policy::share`] by the expected workers), computed
    /// once per policy.
    fn share(&self, policy: &Policy) -> Arc<Policy> {
        let Some(workers) = NonZeroU32::new(self.config.expected_workers).filter(|n| n.get() > 1)
        else {
            return Arc::new(policy.clone());
        };
        if let Some(share) = self.shares.read().get(&policy.id()) {
            return share.clone();
        }
        let share = Arc::new(policy.share(workers));
        let mut shares = self.shares.write();
        // Policies are normally a handful of configured tiers; a caller minting policies per
        // request must not grow this without bound.
        if shares.len() >= MAX_CACHED_SHARES {
            shares.clear();
        }
        shares.insert(policy.id(), share.clone());
        share
    }

    /// Counts a primary failure of `kind`.
    fn count(&self, kind: ErrorKind) {
        match kind {
            ErrorKind::Timeout => &self.timeouts,
            ErrorKind::Unavailable => &self.unavailable_errors,
            _ => &self.other_errors,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.errors_by_kind[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// The parts' probe, one task for the fallback's life, asleep while no part is open. Every
/// interval it pings, all at once, one part of every run of consecutive open parts; when it
/// answers, the parts of the run that live with it ([`RateLimiter::colocated`]) close. A
/// part closed too early (still down) reopens on its next failed check.
async fn probe_parts<P, L>(inner: Weak<Inner<P, L>>, wake: Arc<tokio::sync::Notify>)
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    loop {
        let interval = {
            let Some(i) = inner.upgrade() else { return };
            if i.open_part_count() == 0 {
                drop(i);
                // A part opened since the count was read left a permit: no wake-up is lost.
                wake.notified().await;
                continue;
            }
            i.config.probe_interval
        };
        tokio::time::sleep(interval).await;
        let Some(i) = inner.upgrade() else { return };
        let mut pings = tokio::task::JoinSet::new();
        for run in i.open_runs() {
            let this = Arc::clone(&i);
            pings.spawn(async move {
                this.probes.fetch_add(1, Ordering::Relaxed);
                let ping = this.primary.ping_partition(run.start);
                match tokio::time::timeout(this.config.deadline, ping).await {
                    Ok(Ok(())) => {
                        let with = this.primary.colocated(run.start).await;
                        for range in with {
                            let (start, end) = (range.start.max(run.start), range.end.min(run.end));
                            if start < end {
                                this.close_parts(start..end);
                            }
                        }
                        // Parts of the run not known to live with the one that answered
                        // are left for their own pings.
                        this.close_parts(run.start..run.start + 1);
                    }
                    Ok(Err(e)) => {
                        this.errors_by_kind[e.kind().index()].fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(target: "limiter_fallback", partitions = ?run, reason = %e, "probe failed");
                    }
                    Err(_) => {
                        this.errors_by_kind[ErrorKind::Timeout.index()]
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(target: "limiter_fallback", partitions = ?run, reason = "probe missed the deadline", "probe failed");
                    }
                }
            });
        }
        drop(i);
        while pings.join_next().await.is_some() {}
        if inner.upgrade().is_some_and(|i| i.open_part_count() == 0) {
            tracing::info!(
                target: "limiter_fallback",
                from = "partial",
                to = "closed",
                "every part answered: back on the primary"
            );
        }
    }
}

/// While the circuit is open: every interval, one ping (half-open); success closes it.
async fn probe<P, L>(inner: Weak<Inner<P, L>>)
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.config.probe_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.state.store(HALF_OPEN, Ordering::Release);
        inner.probes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "limiter_fallback", from = "open", to = "half_open", "probing the primary");
        let result = tokio::time::timeout(inner.config.deadline, inner.primary.ping()).await;
        match result {
            Ok(Ok(())) => {
                inner.state.store(CLOSED, Ordering::Release);
                tracing::info!(
                    target: "limiter_fallback",
                    from = "half_open",
                    to = "closed",
                    "primary answered the probe: back on the primary"
                );
                return;
            }
            Ok(Err(e)) => {
                inner.state.store(OPEN, Ordering::Release);
                inner.errors_by_kind[e.kind().index()].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "limiter_fallback", from = "half_open", to = "open", reason = %e, "probe failed");
            }
            Err(_) => {
                inner.state.store(OPEN, Ordering::Release);
                inner.errors_by_kind[ErrorKind::Timeout.index()].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    target: "limiter_fallback",
                    from = "half_open",
                    to = "open",
                    reason = "probe missed the deadline",
                    "probe failed"
                );
            }
        }
    }
}

#[async_trait]
impl<P, L> RateLimiter for Fallback<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return Ok(Decision::unlimited());
        }
        // Bad input is the caller's error in every state.
        bucket::validate(policy.quotas(), cost)?;
        let inner = &self.inner;
        // With a partitioned primary, the client's part has a circuit of its own.
        let part = (!inner.parts.is_empty()).then(|| inner.primary.partition_of(key));
        let part_open = part.is_some_and(|p| {
            inner
                .parts
                .get(p)
                .is_some_and(|o| o.load(Ordering::Acquire))
        });
        if inner.state.load(Ordering::Acquire) == CLOSED && !part_open {
            let deadline = inner.config.deadline;
            let outage: Box<dyn fmt::Display + Send> = match tokio::time::timeout(
                deadline,
                inner.primary.check(key, policy, cost),
            )
            .await
            {
                Ok(Ok(decision)) => {
                    inner.primary_decisions.fetch_add(1, Ordering::Relaxed);
                    return Ok(decision);
                }
                // The caller's own mistake, in every state.
                Ok(Err(e)) if e.is_invalid_input() => return Err(e),
                // One bucket the primary could not read: this check only.
                Ok(Err(e)) if e.is_per_check() => {
                    inner.count(e.kind());
                    tracing::warn!(target: "limiter_fallback", error = %e, "one check could not be decided by the primary: answered by the outage policy");
                    return inner.degraded(key, policy, cost).await;
                }
                Ok(Err(e)) => {
                    inner.count(e.kind());
                    Box::new(e)
                }
                Err(_) => {
                    inner.count(ErrorKind::Timeout);
                    Box::new(format!("no answer within the {deadline:?} deadline"))
                }
            };
            match part {
                Some(p) => inner.open_part(p, &outage),
                None => inner.open(&outage),
            }
        }
        inner.degraded(key, policy, cost).await
    }

    async fn ping(&self) -> Result<(), Error> {
        self.inner.primary.ping().await
    }
}

impl<P: fmt::Debug, L: fmt::Debug> fmt::Debug for Fallback<P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("primary", &self.inner.primary)
            .field("local", &self.inner.local)
            .field("config", &self.inner.config)
            .field(
                "state",
                &CircuitState::from_u8(self.inner.state.load(Ordering::Acquire)),
            )
            .finish()
    }
}
