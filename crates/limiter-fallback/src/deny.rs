//! A local cache of denials in front of any limiter, so an abusive client costs the shared
//! backend at most one call per `retry_after` per worker.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hashbrown::HashMap;
use limiter_core::{
    ClientKey, Clock, Decision, Error, MonotonicClock, Partitioned, Policy, RateLimiter,
};
use parking_lot::Mutex;

const SHARDS: usize = 16;

/// Remembers each denial until its `retry_after` has passed and answers repeats of it
/// locally, without asking the wrapped limiter.
///
/// This never changes whether a request passes, nor its `retry_after`: a denied request
/// takes no tokens, and a bucket refills at a fixed rate, so until `retry_after` has passed
/// the backend would deny the same request again, with the same deadline; other workers'
/// requests can only make the wait longer. Degraded decisions (a fallback standing in for
/// an unavailable backend) are never cached. A request of another cost or policy, or any
/// request after the wait, goes to the backend. A cached answer's `remaining` is the one the
/// backend gave (for a cost of `c`, fewer than `c` tokens; the bucket may have refilled up
/// to `c - 1` since), and its `reset_after` has counted down.
///
/// A [`peek`](RateLimiter::peek) is answered like a check: from a live cached denial of its
/// cost, or else by the wrapped limiter, whose denial is remembered (a denied check takes
/// nothing either, so it is the same denial). A [`refund`](RateLimiter::refund) is
/// forwarded, then the client's cached denial under that policy is dropped: tokens given
/// back may admit it before its `retry_after`.
///
/// ```
/// use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
/// use limiter_fallback::DenyCache;
/// use limiter_memory::{MemoryConfig, MemoryLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), limiter_core::Error> {
/// let limiter = DenyCache::new(MemoryLimiter::new(MemoryConfig::default())?, 100_000);
/// let policy = Policy::new("p", [Quota::per_minute(1)?])?;
/// let key = ClientKey::from(7);
/// assert!(limiter.check(&key, &policy, 1).await?.allowed);
/// assert!(!limiter.check(&key, &policy, 1).await?.allowed); // asks the backend
/// assert!(!limiter.check(&key, &policy, 1).await?.allowed); // answered here
/// assert_eq!(limiter.hits(), 1);
/// # Ok(())
/// # }
/// ```
pub struct DenyCache<L, C = MonotonicClock> {
    inner: L,
    clock: C,
    shards: Box<[Shard]>,
    per_shard: usize,
    hits: AtomicU64,
}

/// Denials by (client, policy id).
type Shard = Mutex<HashMap<(u128, u64), Denial>>;

#[derive(Clone, Copy)]
struct Denial {
    /// When the backend denied, on this cache's clock, in µs.
    at: u64,
    /// When the denial ends, on this cache's clock, in µs.
    until: u64,
    /// The cost that was denied: another cost has another wait.
    cost: u64,
    decision: Decision,
}

impl<L: RateLimiter> DenyCache<L> {
    /// Caches at most `max_entries` denials (at least one per shard) in front of `inner`.
    pub fn new(inner: L, max_entries: usize) -> Self {
        Self::with_clock(inner, max_entries, MonotonicClock::new())
    }
}

impl<L: RateLimiter, C: Clock> DenyCache<L, C> {
    /// As [`DenyCache::new`], on `clock`.
    pub fn with_clock(inner: L, max_entries: usize, clock: C) -> Self {
        Self {
            inner,
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
            hits: AtomicU64::new(0),
        }
    }

    /// Checks answered from the cache since it was made.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Denials held now, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no denial is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The wrapped limiter.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    fn cached(&self, key: &ClientKey, policy: &Policy, cost: u64, now: u64) -> Option<Decision> {
        let id = (key.as_u128(), policy.id());
        let mut shard = self.shard(key).lock();
        let denial = *shard.get(&id)?;
        if now >= denial.until {
            shard.remove(&id);
            return None;
        }
        if cost != denial.cost {
            // Another cost has another wait: ask the backend.
            return None;
        }
        let waited = Duration::from_micros(now.saturating_sub(denial.at));
        let mut decision = denial.decision;
        decision.retry_after = Some(Duration::from_micros(denial.until - now));
        decision.reset_after = decision.reset_after.saturating_sub(waited);
        Some(decision)
    }

    fn remember(&self, key: &ClientKey, policy: &Policy, cost: u64, now: u64, decision: Decision) {
        let Some(wait) = decision.retry_after else {
            return;
        };
        let until = now.saturating_add(micros(Some(wait)));
        let mut shard = self.shard(key).lock();
        if shard.len() >= self.per_shard {
            shard.retain(|_, d| d.until > now);
            if shard.len() >= self.per_shard {
                // Full of live denials: this one is simply not cached (the backend still
                // answers it correctly, only at its usual cost).
                return;
            }
        }
        shard.insert(
            (key.as_u128(), policy.id()),
            Denial {
                at: now,
                until,
                cost,
                decision,
            },
        );
    }
}

impl<L, C> DenyCache<L, C> {
    fn shard(&self, key: &ClientKey) -> &Shard {
        // Client keys are uniform hashes: their low bits pick a shard evenly.
        let index = (key.as_u128() as usize) % SHARDS;
        &self.shards[index]
    }

    fn forget(&self, key: &ClientKey, policy: &Policy) {
        let mut shard = self.shard(key).lock();
        if !shard.is_empty() {
            shard.remove(&(key.as_u128(), policy.id()));
        }
    }
}

fn micros(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[async_trait]
impl<L: RateLimiter, C: Clock> RateLimiter for DenyCache<L, C> {
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return self.inner.check(key, policy, cost).await;
        }
        let now = self.clock.now_micros();
        if let Some(decision) = self.cached(key, policy, cost, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(decision);
        }
        let result = self.inner.check(key, policy, cost).await;
        self.learn(key, policy, cost, now, result)
    }

    fn check_now(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Option<Result<Decision, Error>> {
        if policy.is_unlimited() {
            return self.inner.check_now(key, policy, cost);
        }
        let now = self.clock.now_micros();
        if let Some(decision) = self.cached(key, policy, cost, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(Ok(decision));
        }
        let result = self.inner.check_now(key, policy, cost)?;
        Some(self.learn(key, policy, cost, now, result))
    }

    /// A live cached denial of this cost answers here, as a check would be answered; else
    /// the wrapped limiter's peek, whose denial (the backend's own, not a stand-in's) is
    /// remembered like a check's: a denied check takes nothing either, so it is the same
    /// denial.
    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return self.inner.peek(key, policy, cost).await;
        }
        let now = self.clock.now_micros();
        if let Some(decision) = self.cached(key, policy, cost, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(decision);
        }
        let decision = self.inner.peek(key, policy, cost).await?;
        if !decision.allowed && !decision.degraded {
            self.remember(key, policy, cost, now, decision);
        }
        Ok(decision)
    }

    /// Forwards the refund, then forgets the client's cached denial under `policy`: tokens
    /// given back may admit it sooner than its `retry_after` said.
    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        let result = self.inner.refund(key, policy, tokens).await;
        // After the refund, whatever its result (a timed-out refund may have landed): a
        // denial cached while it ran must not outlive it.
        if !policy.is_unlimited() {
            self.forget(key, policy);
        }
        result
    }

    async fn ping(&self) -> Result<(), Error> {
        self.inner.ping().await
    }

    fn partitioning(&self) -> Option<&dyn Partitioned> {
        self.inner.partitioning()
    }
}

impl<L: RateLimiter, C: Clock> DenyCache<L, C> {
    /// Keeps what the backend's answer teaches, and hands the answer on.
    fn learn(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
        now: u64,
        result: Result<Decision, Error>,
    ) -> Result<Decision, Error> {
        let decision = result?;
        if decision.allowed {
            // Tokens were taken: a denial held for another cost now has a longer wait.
            self.forget(key, policy);
        } else if !decision.degraded {
            // A stand-in's denial (a fallback's share, an outage refusal) says nothing about
            // the real bucket once the backend is back: only the backend's own are kept.
            self.remember(key, policy, cost, now, decision);
        }
        Ok(decision)
    }
}

impl<L: fmt::Debug, C> fmt::Debug for DenyCache<L, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenyCache")
            .field("inner", &self.inner)
            .field("max_entries", &(self.per_shard * SHARDS))
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
