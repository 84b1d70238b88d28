//! Redis first; the in-process limiter when Redis cannot decide (unreachable, slow, or
//! refusing); back to Redis when it heals. Callers never see the outage as an error. And
//! [`DenyCache`], which answers a client's repeated requests during a denial without asking
//! the limiter it wraps (any limiter).
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
//!   master and its hash slots) says so through [`RateLimiter::partitioning`]. The fallback
//!   then keeps one circuit per part: a client whose slot's master is unreachable is served
//!   by the outage policy while every other client stays on the primary, and one probe task
//!   pings, each interval, one slot of every run of open slots, closing the run when it
//!   answers. The state is then [`CircuitState::Partial`] while some parts are open, and
//!   [`FallbackStats::open_partitions`] says how many.
//! - **Peeks and refunds** ([`RateLimiter::peek`], [`RateLimiter::refund`]) go where the
//!   client's checks go: to the primary while its circuit is closed, within the same
//!   deadline, and their failures are classified, counted and open the circuit exactly as a
//!   check's do; otherwise to the outage policy (a peek answers what a check would; a
//!   refund gives back to memory's share, at most its burst, and under `allow` or `deny`,
//!   which count nothing, reports the bucket full). They are not decisions:
//!   [`FallbackStats`] counts only checks among its decisions. What the primary counted is
//!   not refunded in memory during an outage, nor the other way round.
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

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use async_trait::async_trait;
use limiter_core::{ClientKey, Decision, Error, ErrorKind, Policy, RateLimiter, bucket};

mod circuit;
mod config;
mod deny;
mod outage;
mod partitions;
mod stats;

pub use config::{FallbackConfig, OutagePolicy};
pub use deny::DenyCache;
pub use stats::{CircuitState, FallbackStats};

use circuit::CLOSED;
use outage::Shares;
use partitions::Parts;
use stats::Counters;

/// Redis (or any primary) first, a local limiter when it is unavailable. See the
/// [crate docs](crate).
pub struct Fallback<P, L> {
    inner: Arc<Inner<P, L>>,
}

/// The fallback's state, shared with its probe tasks.
struct Inner<P, L> {
    primary: P,
    local: L,
    config: FallbackConfig,
    /// The whole keyspace's circuit ([`CLOSED`], open or half-open).
    state: AtomicU8,
    shares: Shares,
    /// The live workers last seen (0: never told); see [`Fallback::set_fleet_size`].
    fleet: AtomicU32,
    counters: Counters,
    parts: Parts,
}

impl<P, L> Fallback<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    /// Wraps `primary` (Redis) with `local` (usually a `MemoryLimiter`) for outages.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for settings out of range ([`FallbackConfig::validate`]).
    pub fn new(primary: P, local: L, config: FallbackConfig) -> Result<Self, Error> {
        config.validate()?;
        let parts = Parts::new(primary.partitioning().map_or(1, |p| p.partitions()));
        Ok(Self {
            inner: Arc::new(Inner {
                primary,
                local,
                config,
                state: AtomicU8::new(CLOSED),
                shares: Shares::default(),
                fleet: AtomicU32::new(0),
                counters: Counters::default(),
                parts,
            }),
        })
    }

    /// Where checks go now.
    pub fn state(&self) -> CircuitState {
        let whole = CircuitState::from_u8(self.inner.state.load(Ordering::Acquire));
        if whole == CircuitState::Closed && self.inner.parts.open_count() > 0 {
            return CircuitState::Partial;
        }
        whole
    }

    /// The state and counters, for metrics and health checks.
    pub fn stats(&self) -> FallbackStats {
        let i = &self.inner;
        let parts = i.parts.len() as u64;
        let open = if i.state.load(Ordering::Acquire) == CLOSED {
            i.parts.open_count() as u64
        } else {
            parts
        };
        i.counters.snapshot(self.state(), parts, open)
    }

    /// Asks the primary once, within [`FallbackConfig::warm_up`], before any check does (the
    /// primary's `ping`, which for Redis opens every connection and runs the script once).
    /// If it cannot decide, the circuit opens now: the first checks go straight to the
    /// outage policy instead of each finding out, and the probe starts looking for the
    /// primary. A partitioned primary (a cluster) opens no circuit here: one master down says
    /// nothing of the others, and each part opens on its own first failure.
    ///
    /// # Errors
    /// Why the primary could not decide (the fallback serves meanwhile).
    pub async fn warm_up(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let timeout = inner.config.warm_up;
        let error = match tokio::time::timeout(timeout, inner.primary.ping()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.is_invalid_input() => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => Error::Timeout {
                backend: "primary",
                after: timeout,
            },
        };
        inner.counters.failure(error.kind());
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

    /// Tells the fallback how many workers share the limits now (a fleet's membership, as
    /// last seen): during an outage each enforces `⌈limit / workers⌉`, with `workers` never
    /// below `expected_workers` (the floor, or the whole answer when nothing tells). A
    /// fleet that grew while Redis was up keeps its last size through the outage instead
    /// of admitting the limit once per worker.
    pub fn set_fleet_size(&self, workers: u32) {
        self.inner.fleet.store(workers, Ordering::Relaxed);
    }

    /// The workers each limit is divided by in an outage now: the fleet size last set,
    /// never below `expected_workers`.
    pub fn fleet_size(&self) -> u32 {
        self.inner.workers()
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

#[async_trait]
impl<P, L> RateLimiter for Fallback<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.inner.decide(Op::Check, key, policy, cost).await
    }

    /// The primary's peek while the client's circuit is closed; otherwise what the outage
    /// policy would answer a check (memory's peek on this worker's share, or the policy's
    /// fixed answer). A failure is classified as a check's: it opens the circuit the same
    /// way, and the peek is answered as if open.
    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.inner.decide(Op::Peek, key, policy, cost).await
    }

    /// The primary's refund while the client's circuit is closed; otherwise memory's, on
    /// this worker's share (with [`OutagePolicy::Fallback`]; the other outage policies count
    /// nothing, so there is nothing to give back). A failure is classified as a check's.
    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        self.inner.decide(Op::Refund, key, policy, tokens).await
    }

    async fn ping(&self) -> Result<(), Error> {
        self.inner.primary.ping().await
    }
}

/// What a call asks of a limiter: the three trait methods that decide on buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Check,
    Peek,
    Refund,
}

impl<P, L> Inner<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    /// `op` on the primary while the client's circuit is closed, else by the outage policy;
    /// a primary that cannot decide opens the circuit (or the client's part of it).
    async fn decide(
        self: &Arc<Self>,
        op: Op,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return Ok(Decision::unlimited());
        }
        // Bad input is the caller's error in every state (and in memory a share's smaller
        // burst must not pass for the policy's).
        bucket::validate(policy.quotas(), cost)?;
        // With a partitioned primary, the client's part has a circuit of its own.
        let part = (!self.parts.is_empty()).then(|| self.partition_of(key));
        let part_open = part.is_some_and(|p| self.parts.is_open(p));
        if self.state.load(Ordering::Acquire) == CLOSED && !part_open {
            let deadline = self.config.deadline;
            let asked = async {
                match op {
                    Op::Check => self.primary.check(key, policy, cost).await,
                    Op::Peek => self.primary.peek(key, policy, cost).await,
                    Op::Refund => self.primary.refund(key, policy, cost).await,
                }
            };
            let outage: Box<dyn fmt::Display + Send> = match tokio::time::timeout(deadline, asked)
                .await
            {
                Ok(Ok(decision)) => {
                    if op == Op::Check {
                        self.counters
                            .primary_decisions
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(decision);
                }
                // The caller's own mistake, in every state.
                Ok(Err(e)) if e.is_invalid_input() => return Err(e),
                // One bucket the primary could not read: this call only.
                Ok(Err(e)) if e.is_per_check() => {
                    self.counters.failure(e.kind());
                    tracing::warn!(target: "limiter_fallback", error = %e, ?op, "one call could not be decided by the primary: answered by the outage policy");
                    return self.degraded(op, key, policy, cost).await;
                }
                Ok(Err(e)) => {
                    self.counters.failure(e.kind());
                    Box::new(e)
                }
                Err(_) => {
                    self.counters.failure(ErrorKind::Timeout);
                    Box::new(format!("no answer within the {deadline:?} deadline"))
                }
            };
            match part {
                Some(p) => self.open_part(p, &outage),
                None => self.open(&outage),
            }
        }
        self.degraded(op, key, policy, cost).await
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
