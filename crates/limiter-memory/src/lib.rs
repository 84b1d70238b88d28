//! The in-process limiter: token buckets in a sharded map with a hard cap on how many it
//! tracks. Fast enough for the hot path, and the fallback when Redis is down.
//!
//! ```
//! use limiter_core::{ClientKeyHasher, RateLimiter, TierPolicies, Tier};
//! use limiter_memory::{MemoryConfig, MemoryLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), limiter_core::Error> {
//! let limiter = MemoryLimiter::new(MemoryConfig { max_buckets: 100_000 })?;
//! let tiers = TierPolicies::default();
//! let key = ClientKeyHasher::new(b"a deployment secret of 16+ bytes")?.hash("198.51.100.4");
//!
//! let decision = limiter.check(&key, tiers.get(Tier::Anonymous), 1).await?;
//! assert!(decision.allowed);
//! assert_eq!((decision.limit, decision.remaining), (100, 99));
//! # Ok(())
//! # }
//! ```
//!
//! # Memory bound
//! One bucket is tracked per client, policy and quota, 32 bytes each plus the hash table's
//! slack, and never more than [`MemoryConfig::max_buckets`] of them. The cap is split evenly
//! over the shards (up to 64, by hash), and each shard keeps to its share. When a shard is
//! full, a newcomer takes the place of an *idle* bucket first: one that has refilled
//! completely, whose state is worth nothing because a fresh bucket is identical. A full shard
//! sweeps out all its idle buckets at once, as often as that stays cheap (its cost is spread
//! over the evictions between sweeps); between sweeps it samples a few buckets and gives up
//! the first idle one, or else the one closest to full, which loses the least. No background
//! thread is needed; [`MemoryLimiter::purge_idle`] reclaims every idle bucket at once for
//! callers who want memory back on a timer.

use std::fmt;

use async_trait::async_trait;
use limiter_core::bucket::Outcome;
use limiter_core::{
    Backend, ClientKey, Clock, Decision, Error, MonotonicClock, Policy, Quota, RateLimiter,
};
use serde::{Deserialize, Serialize};

mod key;
mod shard;

use key::{BucketKey, shard_index};
use shard::{Shard, ShardMap};

/// Settings of a [`MemoryLimiter`]: plain serde data an application embeds (`ratelimitd`'s
/// `[memory]` section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most buckets tracked at once: one per client, policy and quota. Each costs 32 bytes
    /// plus hash-table slack (at most 76 bytes in all), so the default of 1,000,000 bounds the
    /// store under 76 MB. Must be at least 1.
    pub max_buckets: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_buckets: 1_000_000,
        }
    }
}

impl MemoryConfig {
    /// Checks the settings, naming the key as a `[memory]` section of a file would.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `max_buckets` is zero: such a store could decide nothing.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_buckets == 0 {
            return Err(Error::config("memory.max_buckets: must be at least 1"));
        }
        Ok(())
    }
}

/// Shards are powers of two, at most this many, with at least `MIN_SHARD_CAP` places each.
const MAX_SHARDS: usize = 64;
const MIN_SHARD_CAP: usize = 32;

/// The in-process token-bucket limiter. See the [crate docs](crate).
///
/// Generic over its [`Clock`] so tests can drive time by hand ([`limiter_core::ManualClock`]).
pub struct MemoryLimiter<C: Clock = MonotonicClock> {
    shards: Box<[Shard]>,
    shard_bits: u32,
    max_buckets: usize,
    clock: C,
}

impl MemoryLimiter<MonotonicClock> {
    /// A limiter on the real monotonic clock.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `max_buckets` is zero: such a store could decide nothing.
    pub fn new(config: MemoryConfig) -> Result<Self, Error> {
        Self::with_clock(config, MonotonicClock::new())
    }
}

impl<C: Clock> MemoryLimiter<C> {
    /// A limiter on `clock`.
    ///
    /// # Errors
    /// As for [`MemoryLimiter::new`].
    pub fn with_clock(config: MemoryConfig, clock: C) -> Result<Self, Error> {
        config.validate()?;
        let max = config.max_buckets;
        let wanted = (max / MIN_SHARD_CAP).clamp(1, MAX_SHARDS);
        // Largest power of two not above `wanted`.
        let shard_bits = usize::BITS - 1 - wanted.leading_zeros();
        let count = 1usize << shard_bits;
        let (base, extra) = (max / count, max % count);
        let shards = (0..count)
            .map(|i| Shard::new(base + usize::from(i < extra)))
            .collect();
        Ok(Self {
            shards,
            shard_bits,
            max_buckets: max,
            clock,
        })
    }

    /// The same check as [`RateLimiter::check`], synchronously: it never waits on I/O, only
    /// on one shard's lock for the duration of the math.
    ///
    /// # Errors
    /// [`Error::ZeroCost`] and [`Error::InsufficientCapacity`] for a cost that can never pass.
    pub fn check_sync(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return Ok(Decision::unlimited());
        }
        let quotas = policy.quotas();
        // Every bucket of one check lives in the shard of (client, policy), under one lock,
        // which is what makes a multi-quota check all-or-nothing.
        let client = BucketKey::client(key, policy);
        let hash = client.hash();
        let shard = &self.shards[shard_index(hash, self.shard_bits)];
        let now = self.clock.now_micros();
        let mut shard = shard.inner.lock();
        let outcome = if let [quota] = quotas {
            shard.check_one(client, hash, quota, now, cost)?
        } else {
            shard.check_many(client, quotas, now, cost)?
        };
        drop(shard);
        Ok(Decision::from_outcome(&outcome, quotas, Backend::Memory))
    }

    /// The same dry run as [`RateLimiter::peek`], synchronously: what
    /// [`check_sync`](Self::check_sync) would answer now, taking nothing and tracking no new
    /// bucket.
    ///
    /// # Errors
    /// As for [`check_sync`](Self::check_sync).
    pub fn peek_sync(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Result<Decision, Error> {
        self.on_buckets(key, policy, |map, client, quotas, now| {
            map.peek(client, quotas, now, cost)
        })
    }

    /// The same refund as [`RateLimiter::refund`], synchronously: `tokens` back to every
    /// bucket of the client under `policy`, each capped at its capacity; a bucket not
    /// tracked is full and stays untracked. Answers the state after, allowed.
    ///
    /// # Errors
    /// As for [`check_sync`](Self::check_sync), with `tokens` for the cost.
    pub fn refund_sync(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        self.on_buckets(key, policy, |map, client, quotas, now| {
            map.refund(client, quotas, now, tokens)
        })
    }

    /// `op` on the client's buckets under `policy`, in their shard, now; its outcome as a
    /// decision. An unlimited policy is answered without a bucket.
    fn on_buckets(
        &self,
        key: &ClientKey,
        policy: &Policy,
        op: impl FnOnce(&mut ShardMap, BucketKey, &[Quota], u64) -> Result<Outcome, Error>,
    ) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return Ok(Decision::unlimited());
        }
        let quotas = policy.quotas();
        let client = BucketKey::client(key, policy);
        let now = self.clock.now_micros();
        let outcome = op(&mut self.shard_of(client).inner.lock(), client, quotas, now)?;
        Ok(Decision::from_outcome(&outcome, quotas, Backend::Memory))
    }

    /// The shard that holds every bucket of (client, policy).
    fn shard_of(&self, client: BucketKey) -> &Shard {
        &self.shards[shard_index(client.hash(), self.shard_bits)]
    }

    /// Buckets tracked now, idle ones included until they are reclaimed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.inner.lock().table.len()).sum()
    }

    /// True when no bucket is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hard cap on tracked buckets.
    pub fn max_buckets(&self) -> usize {
        self.max_buckets
    }

    /// Forgets every idle (fully refilled) bucket now, one shard at a time, and returns how
    /// many were removed. Nothing requires calling it; it gives memory back on a timer.
    pub fn purge_idle(&self) -> usize {
        let now = self.clock.now_micros();
        self.shards.iter().map(|s| s.inner.lock().sweep(now)).sum()
    }

    /// The clock the limiter reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

#[async_trait]
impl<C: Clock> RateLimiter for MemoryLimiter<C> {
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.check_sync(key, policy, cost)
    }

    fn check_now(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Option<Result<Decision, Error>> {
        Some(self.check_sync(key, policy, cost))
    }

    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.peek_sync(key, policy, cost)
    }

    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        self.refund_sync(key, policy, tokens)
    }
}

impl<C: Clock> fmt::Debug for MemoryLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("max_buckets", &self.max_buckets)
            .field("shards", &self.shards.len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_core::{ManualClock, Quota};
    use std::time::Duration;

    fn limiter(max: usize) -> (MemoryLimiter<ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        let l =
            MemoryLimiter::with_clock(MemoryConfig { max_buckets: max }, clock.clone()).unwrap();
        (l, clock)
    }

    #[test]
    fn shards_split_the_cap_exactly() {
        for max in [1, 2, 31, 32, 100, 1_000, 2_047, 1_000_000] {
            let (l, _) = limiter(max);
            let total: usize = l.shards.iter().map(|s| s.inner.lock().cap).sum();
            assert_eq!(total, max);
            assert!(l.shards.len().is_power_of_two() && l.shards.len() <= MAX_SHARDS);
            assert!(l.shards.iter().all(|s| s.inner.lock().cap >= 1));
        }
    }

    #[test]
    fn structured_client_keys_get_distinct_buckets() {
        let a = Policy::new(
            "a",
            [Quota::per_second(1).unwrap(), Quota::per_hour(9).unwrap()],
        )
        .unwrap();
        let b = Policy::new("b", [Quota::per_second(1).unwrap()]).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000u128 {
            for k in [i, i << 32, i << 64, i << 96, u128::MAX - i] {
                let key = ClientKey::from(k);
                for policy in [&a, &b] {
                    let client = BucketKey::client(&key, policy);
                    for q in 0..policy.quotas().len() {
                        seen.insert(client.quota(q).0);
                    }
                }
            }
        }
        // For i = 0 the four shifts give one key: 99,997 distinct keys, 3 buckets each.
        assert_eq!(seen.len(), (20_000 * 5 - 3) * 3);
    }

    #[test]
    fn zero_cap_is_an_error() {
        assert!(MemoryLimiter::new(MemoryConfig { max_buckets: 0 }).is_err());
    }

    #[test]
    fn idle_buckets_are_evicted_before_active_ones() {
        // One shard of 40: 20 clients go idle, 20 stay active, then 20 newcomers arrive.
        let (l, clock) = limiter(40);
        let policy = Policy::new("p", [Quota::per_second(10).unwrap()]).unwrap();
        let idle = |i: u128| ClientKey::from(i);
        let active = |i: u128| ClientKey::from(1_000 + i);
        for i in 0..20 {
            l.check_sync(&idle(i), &policy, 1).unwrap();
        }
        clock.advance(Duration::from_millis(500));
        for i in 0..20 {
            l.check_sync(&active(i), &policy, 10).unwrap(); // drained
        }
        clock.advance(Duration::from_millis(50)); // idle ones are full again, active are not
        for i in 0..20 {
            l.check_sync(&ClientKey::from(2_000 + i), &policy, 1)
                .unwrap();
        }
        assert_eq!(l.len(), 40);
        for i in 0..20 {
            let d = l.check_sync(&active(i), &policy, 1).unwrap();
            assert!(
                !d.allowed,
                "active client {i} was evicted and got a fresh bucket"
            );
        }
    }

    #[test]
    fn entries_for_other_policies_are_separate() {
        let (l, _) = limiter(10);
        let a = Policy::new("a", [Quota::per_minute(1).unwrap()]).unwrap();
        let b = Policy::new("b", [Quota::per_minute(1).unwrap()]).unwrap();
        let key = ClientKey::from(7);
        assert!(l.check_sync(&key, &a, 1).unwrap().allowed);
        assert!(!l.check_sync(&key, &a, 1).unwrap().allowed);
        assert!(l.check_sync(&key, &b, 1).unwrap().allowed);
    }
}
