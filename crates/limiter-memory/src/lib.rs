//! The in-process limiter: token buckets in a sharded map with a hard cap on tracked
//! clients. Fast enough for the hot path, and the fallback when Redis is down.
//!
//! ```
//! use limiter_core::{ClientKeyHasher, RateLimiter, TierPolicies, Tier};
//! use limiter_memory::{MemoryConfig, MemoryLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), limiter_core::Error> {
//! let limiter = MemoryLimiter::new(MemoryConfig { max_clients: 100_000 })?;
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
//! At most [`MemoryConfig::max_clients`] buckets (one per client and policy) are tracked.
//! The cap is split evenly over the shards (up to 64, by hash), and each shard keeps to its
//! share. When a shard is full, a new client takes the place of an *idle* one first: a bucket that
//! has refilled completely, whose state is worth nothing because a fresh bucket is
//! identical. Only when no idle bucket can be found is an active one given up, the one
//! closest to full (it loses the least). Idle buckets are also reclaimed a few at a time as
//! new clients arrive, with no background thread; [`MemoryLimiter::purge_idle`] reclaims
//! all of them at once for callers who want it on a timer.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use async_trait::async_trait;
use indexmap::IndexMap;
use limiter_core::bucket::{self, BucketState};
use limiter_core::{
    Backend, ClientKey, Clock, Decision, Error, MAX_QUOTAS, MonotonicClock, Policy, RateLimiter,
};
use parking_lot::Mutex;
use smallvec::SmallVec;

/// Settings of a [`MemoryLimiter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Most buckets (client × policy) tracked at once. Each costs about 100 bytes, so the
    /// default of 1,000,000 bounds the store near 100 MB. Must be at least 1.
    pub max_clients: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_clients: 1_000_000,
        }
    }
}

/// Entries a full shard looks at to find an idle one (or the one closest to idle) before
/// giving up an active bucket, when a full sweep is not yet due.
const EVICTION_SAMPLE: usize = 16;
/// A full sweep of a shard for idle buckets is allowed once per `len / SWEEP_EVERY`
/// evictions, so its O(len) cost stays O(SWEEP_EVERY) per eviction.
const SWEEP_EVERY: usize = 8;
/// Shards are powers of two, at most this many, with at least `MIN_SHARD_CAP` slots each.
const MAX_SHARDS: usize = 64;
const MIN_SHARD_CAP: usize = 32;

/// The in-process token-bucket limiter. See the [crate docs](crate).
///
/// Generic over its [`Clock`] so tests can drive time by hand ([`limiter_core::ManualClock`]).
pub struct MemoryLimiter<C: Clock = MonotonicClock> {
    shards: Box<[Shard]>,
    shard_bits: u32,
    max_clients: usize,
    clock: C,
}

impl MemoryLimiter<MonotonicClock> {
    /// A limiter on the real monotonic clock.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] when `max_clients` is zero: such a store could decide nothing.
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
        let max = config.max_clients;
        if max == 0 {
            return Err(Error::InvalidPolicy {
                reason: "max_clients must be at least 1".to_owned(),
            });
        }
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
            max_clients: max,
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
        bucket::validate(quotas, cost)?;
        let slot = SlotKey::new(key, policy);
        let now = self.clock.now_micros();
        let mut shard = self.shards[slot.shard(self.shard_bits)].inner.lock();

        let outcome = match shard.map.get_mut(&slot) {
            Some(entry) if entry.states.len() == quotas.len() => {
                let outcome = bucket::check(quotas, &mut entry.states, now, cost)?;
                if outcome.allowed {
                    entry.refresh_full_at(quotas);
                    let full_at = entry.full_at;
                    shard.note_write(full_at);
                }
                outcome
            }
            _ => {
                let mut entry = Entry {
                    states: quotas.iter().map(|q| BucketState::full(q, now)).collect(),
                    full_at: 0,
                };
                let outcome = bucket::check(quotas, &mut entry.states, now, cost)?;
                entry.refresh_full_at(quotas);
                shard.insert(slot, entry, now);
                outcome
            }
        };
        drop(shard);
        Ok(Decision::from_outcome(&outcome, quotas, Backend::Memory))
    }

    /// Buckets tracked now, idle ones included until they are reclaimed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.inner.lock().map.len()).sum()
    }

    /// True when no bucket is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hard cap on tracked buckets.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Forgets every idle (fully refilled) bucket now, one shard at a time, and returns how
    /// many were removed. Nothing requires calling it; it lets memory be reclaimed on a timer.
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
}

impl<C: Clock> fmt::Debug for MemoryLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("max_clients", &self.max_clients)
            .field("shards", &self.shards.len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// One lock's worth of buckets, padded so neighbouring shards' locks do not share a cache
/// line.
#[repr(align(128))]
struct Shard {
    inner: Mutex<ShardMap>,
}

impl Shard {
    fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(ShardMap {
                map: IndexMap::default(),
                cap,
                hand: 0,
                evictions_since_sweep: usize::MAX,
                no_idle_before: u64::MAX,
            }),
        }
    }
}

struct ShardMap {
    map: IndexMap<SlotKey, Entry, BuildHasherDefault<PrehashedHasher>>,
    cap: usize,
    /// Where the next eviction or reclamation step looks, as an index into `map`.
    hand: usize,
    evictions_since_sweep: usize,
    /// No bucket in this shard can be idle before this time (µs): the minimum `full_at`
    /// written since the last full sweep. Saves sweeping when nothing can be found.
    no_idle_before: u64,
}

impl ShardMap {
    fn note_write(&mut self, full_at: u64) {
        self.no_idle_before = self.no_idle_before.min(full_at);
    }

    fn insert(&mut self, slot: SlotKey, entry: Entry, now: u64) {
        self.note_write(entry.full_at);
        if self.map.len() < self.cap {
            self.reclaim_step(now);
        } else {
            let sweep_due = now >= self.no_idle_before
                && self.evictions_since_sweep.saturating_mul(SWEEP_EVERY) >= self.map.len();
            if sweep_due {
                self.sweep(now);
            }
            if self.map.len() >= self.cap {
                self.evict_one(now);
                self.evictions_since_sweep = self.evictions_since_sweep.saturating_add(1);
            }
        }
        self.map.insert(slot, entry);
    }

    /// Removes every idle bucket; records when the next one can appear.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.full_at > now);
        self.no_idle_before = self
            .map
            .values()
            .map(|e| e.full_at)
            .min()
            .unwrap_or(u64::MAX);
        self.evictions_since_sweep = 0;
        before - self.map.len()
    }

    /// Makes room for one: the first idle bucket among a sample at the hand, or else the
    /// sampled bucket closest to full.
    fn evict_one(&mut self, now: u64) {
        let len = self.map.len();
        if len == 0 {
            return;
        }
        let mut victim = self.hand % len;
        let mut victim_full_at = u64::MAX;
        for step in 0..EVICTION_SAMPLE.min(len) {
            let i = (self.hand + step) % len;
            let Some((_, e)) = self.map.get_index(i) else {
                break;
            };
            if e.full_at < victim_full_at {
                (victim, victim_full_at) = (i, e.full_at);
            }
            if e.full_at <= now {
                break;
            }
        }
        self.map.swap_remove_index(victim);
        self.hand = victim + 1;
    }

    /// Looks at the bucket under the hand and forgets it if idle: O(1) work per new client
    /// that keeps idle buckets from lingering.
    fn reclaim_step(&mut self, now: u64) {
        let len = self.map.len();
        if len == 0 {
            return;
        }
        let i = self.hand % len;
        if self.map.get_index(i).is_some_and(|(_, e)| e.full_at <= now) {
            self.map.swap_remove_index(i);
            self.hand = i;
        } else {
            self.hand = i + 1;
        }
    }
}

/// The buckets of one client under one policy.
struct Entry {
    states: SmallVec<[BucketState; 2]>,
    /// When every bucket is full again (µs): from then on the entry is idle.
    full_at: u64,
}

impl Entry {
    fn refresh_full_at(&mut self, quotas: &[limiter_core::Quota]) {
        self.full_at = quotas
            .iter()
            .zip(&self.states)
            .map(|(q, s)| s.full_at(q))
            .max()
            .unwrap_or(0);
    }
}

const _: () = assert!(
    MAX_QUOTAS >= 2,
    "SmallVec inline size assumes two quotas is common"
);

/// A client under a policy, with its hash computed once.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SlotKey {
    client: u128,
    policy: u64,
    hash: u64,
}

impl SlotKey {
    fn new(key: &ClientKey, policy: &Policy) -> Self {
        let client = key.as_u128();
        // Client keys are HMAC output, but callers may build them from small integers;
        // a full 64-bit finalizer (splitmix64's) spreads any input over every bit.
        let mut h = (client as u64) ^ ((client >> 64) as u64).rotate_left(29) ^ policy.id();
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        Self {
            client,
            policy: policy.id(),
            hash: h,
        }
    }

    /// The top bits pick the shard; the map gets the hash rotated so that its bucket index
    /// (low bits) and tag (top 7 bits) are independent of the shard.
    fn shard(&self, bits: u32) -> usize {
        self.hash.checked_shr(u64::BITS - bits).unwrap_or(0) as usize
    }
}

impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash.rotate_left(32));
    }
}

/// Passes a precomputed 64-bit hash through.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `SlotKey` is hashed here, and it calls `write_u64`; fold anything else in
        // correctly all the same.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
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
            MemoryLimiter::with_clock(MemoryConfig { max_clients: max }, clock.clone()).unwrap();
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
    fn zero_cap_is_an_error() {
        assert!(MemoryLimiter::new(MemoryConfig { max_clients: 0 }).is_err());
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

    #[test]
    fn prehashed_hasher_folds_bytes() {
        let mut h = PrehashedHasher::default();
        h.write(b"ab");
        assert_ne!(h.finish(), 0);
    }
}
