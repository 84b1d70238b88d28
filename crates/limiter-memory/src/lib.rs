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
use hashbrown::HashTable;
use limiter_core::bucket::{self, BucketState};
use limiter_core::{
    Backend, ClientKey, Clock, Decision, Error, MAX_QUOTAS, MonotonicClock, Policy, Quota,
    RateLimiter,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

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
            return Err(Error::config("memory.max_buckets must be at least 1"));
        }
        Ok(())
    }
}

/// Buckets a full shard looks at for an idle one (or the one closest to idle) when a full
/// sweep is not due.
const EVICTION_SAMPLE: usize = 16;
/// A full sweep of a shard for idle buckets is allowed once per `len / SWEEP_EVERY`
/// evictions, so its O(len) cost stays O(SWEEP_EVERY) per eviction.
const SWEEP_EVERY: usize = 8;
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

/// One lock's worth of buckets, aligned so neighbouring shards' locks do not share a cache
/// line.
#[repr(align(128))]
struct Shard {
    inner: Mutex<ShardMap>,
}

impl Shard {
    fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(ShardMap {
                table: HashTable::new(),
                cap,
                evictions_since_sweep: usize::MAX,
                no_idle_before: u64::MAX,
            }),
        }
    }
}

struct ShardMap {
    table: HashTable<Entry>,
    cap: usize,
    evictions_since_sweep: usize,
    /// No bucket in this shard can be idle before this time (µs): the earliest `full_at`
    /// written since the last sweep. Saves sweeping when nothing could be found.
    no_idle_before: u64,
}

/// One bucket in 32 bytes, so that entries never straddle cache lines: measured against 40
/// bytes, a 100,000-key workload ran 9% faster (see docs/performance.md).
struct Entry {
    key: BucketKey,
    /// Milliseconds from `state.updated` until the bucket is full, rounded up (so an entry is
    /// never thought idle early); `u32::MAX` (about 49.7 days) and more mean "not before
    /// anything else": a bucket that takes longer to refill (one token a week, a burst of 8)
    /// is never idle by this count, only evicted last under a full cap. Decisions never read
    /// this.
    full_after_ms: u32,
    state: BucketState,
}

impl Entry {
    fn new(key: BucketKey, state: BucketState, full_after_us: u64) -> Self {
        let mut entry = Entry {
            key,
            full_after_ms: 0,
            state,
        };
        entry.set(state, full_after_us);
        entry
    }

    fn set(&mut self, state: BucketState, full_after_us: u64) {
        self.state = state;
        self.full_after_ms = u32::try_from(full_after_us.div_ceil(1_000)).unwrap_or(u32::MAX);
    }

    /// When the bucket is full again (µs), never earlier than the truth: from then on it is
    /// idle. A refill too long to count is never.
    fn full_at(&self) -> u64 {
        if self.full_after_ms == u32::MAX {
            return u64::MAX;
        }
        self.state
            .updated
            .saturating_add(u64::from(self.full_after_ms) * 1_000)
    }
}

const _: () = assert!(std::mem::size_of::<Entry>() == 32);

impl ShardMap {
    /// A one-quota policy: one lookup, the math on the stored state in place. `hash` is
    /// `key.hash()`, already computed to pick the shard.
    #[inline]
    fn check_one(
        &mut self,
        key: BucketKey,
        hash: u64,
        quota: &Quota,
        now: u64,
        cost: u64,
    ) -> Result<bucket::Outcome, Error> {
        let quotas = std::slice::from_ref(quota);
        if let Some(entry) = self.table.find_mut(hash, |e| e.key == key) {
            let outcome = bucket::check(quotas, std::slice::from_mut(&mut entry.state), now, cost)?;
            if outcome.allowed {
                // With one quota the reported quota is this one: reset_after is its time to
                // full from `now`, and the stamp is at most `now` (the clock is monotonic; a
                // coarse quota stamps the tick before it).
                let state = entry.state;
                let full_after = outcome
                    .reset_after_us
                    .saturating_add(now.saturating_sub(state.updated));
                entry.set(state, full_after);
                let full_at = entry.full_at();
                self.note_write(full_at);
            }
            return Ok(outcome);
        }
        let mut state = BucketState::full(quota, now);
        let outcome = bucket::check(quotas, std::slice::from_mut(&mut state), now, cost)?;
        let full_after = outcome
            .reset_after_us
            .saturating_add(now.saturating_sub(state.updated));
        self.insert(hash, Entry::new(key, state, full_after), now);
        Ok(outcome)
    }

    /// Several quotas: gather their states, decide, and write back only when admitted.
    fn check_many(
        &mut self,
        client: BucketKey,
        quotas: &[Quota],
        now: u64,
        cost: u64,
    ) -> Result<bucket::Outcome, Error> {
        let n = quotas.len().min(MAX_QUOTAS);
        let mut states = [BucketState {
            level: 0,
            updated: 0,
        }; MAX_QUOTAS];
        for (i, (q, s)) in quotas.iter().zip(&mut states[..n]).enumerate() {
            let key = client.quota(i);
            *s = match self.table.find(key.hash(), |e| e.key == key) {
                Some(e) => e.state,
                None => BucketState::full(q, now),
            };
        }
        let outcome = bucket::check(quotas, &mut states[..n], now, cost)?;
        if outcome.allowed {
            for (i, (q, &state)) in quotas.iter().zip(&states[..n]).enumerate() {
                let key = client.quota(i);
                let hash = key.hash();
                let entry = Entry::new(key, state, state.full_after(q));
                self.note_write(entry.full_at());
                match self.table.find_mut(hash, |e| e.key == key) {
                    Some(e) => *e = entry,
                    None => self.insert(hash, entry, now),
                }
            }
        }
        Ok(outcome)
    }

    fn note_write(&mut self, full_at: u64) {
        self.no_idle_before = self.no_idle_before.min(full_at);
    }

    fn insert(&mut self, hash: u64, entry: Entry, now: u64) {
        self.note_write(entry.full_at());
        if self.table.len() >= self.cap {
            let sweep_due = now >= self.no_idle_before
                && self.evictions_since_sweep.saturating_mul(SWEEP_EVERY) >= self.table.len();
            if sweep_due {
                self.sweep(now);
            }
            if self.table.len() >= self.cap {
                self.evict_one(now);
                self.evictions_since_sweep = self.evictions_since_sweep.saturating_add(1);
            }
        }
        self.table.insert_unique(hash, entry, |e| e.key.hash());
    }

    /// Removes every idle bucket; records when the next one can appear.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.table.len();
        self.table.retain(|e| e.full_at() > now);
        self.no_idle_before = self
            .table
            .iter()
            .map(Entry::full_at)
            .min()
            .unwrap_or(u64::MAX);
        self.evictions_since_sweep = 0;
        before - self.table.len()
    }

    /// Makes room for one: the first idle bucket among a sample, or else the sampled bucket
    /// closest to full (it loses the least). The sample is the first entries in table order,
    /// which is hash order: clients at random, whatever their activity.
    fn evict_one(&mut self, now: u64) {
        let mut victim: Option<(BucketKey, u64)> = None;
        for e in self.table.iter().take(EVICTION_SAMPLE) {
            let full_at = e.full_at();
            if victim.is_none_or(|(_, v)| full_at < v) {
                victim = Some((e.key, full_at));
            }
            if full_at <= now {
                break;
            }
        }
        if let Some((key, _)) = victim
            && let Ok(found) = self.table.find_entry(key.hash(), |e| e.key == key)
        {
            found.remove();
        }
    }
}

/// A bucket's identity in 96 bits, drawn from the 128-bit client key, the policy id and the
/// quota's index. Keys that differ only in their high or only in their low 64 bits never
/// meet (each half enters through a bijection); otherwise two buckets share an identity with
/// a chance of about 2^-96 per pair (2^-57 for a million buckets), whatever the structure
/// of the keys: client keys are HMAC output, but tests and benchmarks build them from
/// integers.
#[derive(Clone, Copy, PartialEq, Eq)]
struct BucketKey([u32; 3]);

impl BucketKey {
    /// The key of a client's first quota under `policy`; its hash also picks the shard.
    fn client(key: &ClientKey, policy: &Policy) -> Self {
        let client = key.as_u128();
        let (hi, lo) = ((client >> 64) as u64, client as u64);
        let p = policy.id();
        let top = hi ^ mix64(lo ^ p);
        let low = (lo ^ (lo >> 32)) as u32 ^ (p >> 32) as u32;
        Self([(top >> 32) as u32, top as u32, low])
    }

    /// The key of quota `index` of the same client and policy.
    fn quota(self, index: usize) -> Self {
        let [a, b, c] = self.0;
        Self([a, b, c ^ (index as u32).wrapping_mul(0x9e37_79b9)])
    }

    /// A well-spread hash for the shard and the table.
    fn hash(self) -> u64 {
        let [a, b, c] = self.0;
        mix64(((u64::from(a) << 32) | u64::from(b)) ^ u64::from(c).rotate_left(17))
    }
}

/// splitmix64's finalizer: a bijection on u64 whose every output bit depends on every input
/// bit.
fn mix64(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard of a hash, from bits 32 and up: a shard's table takes its slot index from the
/// low bits and a tag from the top 7, so the shard must use neither or they would be
/// constant within a shard.
fn shard_index(hash: u64, bits: u32) -> usize {
    ((hash >> 32) & ((1 << bits) - 1)) as usize
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
