//! One shard of the store: a lock around a hash table of 32-byte buckets, with a hard cap,
//! idle-first eviction and amortised sweeps.

use hashbrown::HashTable;
use limiter_core::bucket::{self, BucketState};
use limiter_core::{Error, MAX_QUOTAS, Quota};
use parking_lot::Mutex;

use crate::key::BucketKey;

/// Buckets a full shard looks at for an idle one (or the one closest to idle) when a full
/// sweep is not due.
const EVICTION_SAMPLE: usize = 16;
/// A full sweep of a shard for idle buckets is allowed once per `len / SWEEP_EVERY`
/// evictions, so its O(len) cost stays O(SWEEP_EVERY) per eviction.
const SWEEP_EVERY: usize = 8;

/// One lock's worth of buckets, aligned so neighbouring shards' locks do not share a cache
/// line.
#[repr(align(128))]
pub(crate) struct Shard {
    pub(crate) inner: Mutex<ShardMap>,
}

impl Shard {
    pub(crate) fn new(cap: usize) -> Self {
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

pub(crate) struct ShardMap {
    pub(crate) table: HashTable<Entry>,
    pub(crate) cap: usize,
    evictions_since_sweep: usize,
    /// No bucket in this shard can be idle before this time (µs): the earliest `full_at`
    /// written since the last sweep. Saves sweeping when nothing could be found.
    no_idle_before: u64,
}

/// One bucket in 32 bytes, so that entries never straddle cache lines: measured against 40
/// bytes, a 100,000-key workload ran 9% faster (see docs/performance.md).
pub(crate) struct Entry {
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
    pub(crate) fn check_one(
        &mut self,
        key: BucketKey,
        hash: u64,
        quota: &Quota,
        now: u64,
        cost: u64,
    ) -> Result<bucket::Outcome, Error> {
        if let Some(entry) = self.table.find_mut(hash, |e| e.key == key) {
            let outcome = bucket::check_one(quota, &mut entry.state, now, cost)?;
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
        let outcome = bucket::check_one(quota, &mut state, now, cost)?;
        let full_after = outcome
            .reset_after_us
            .saturating_add(now.saturating_sub(state.updated));
        self.insert(hash, Entry::new(key, state, full_after), now);
        Ok(outcome)
    }

    /// Several quotas: gather their states, decide, and write back only when admitted.
    pub(crate) fn check_many(
        &mut self,
        client: BucketKey,
        quotas: &[Quota],
        now: u64,
        cost: u64,
    ) -> Result<bucket::Outcome, Error> {
        let (mut states, n) = self.states(client, quotas, now);
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

    /// What a check would answer, taking nothing: the states are read, never written, and
    /// a bucket not held is not created.
    pub(crate) fn peek(
        &self,
        client: BucketKey,
        quotas: &[Quota],
        now: u64,
        cost: u64,
    ) -> Result<bucket::Outcome, Error> {
        let (states, n) = self.states(client, quotas, now);
        bucket::peek(quotas, &states[..n], now, cost)
    }

    /// Gives `tokens` back to every bucket of the client held here. A bucket not held is
    /// full, and stays so without being created: a refund never costs a place.
    pub(crate) fn refund(
        &mut self,
        client: BucketKey,
        quotas: &[Quota],
        now: u64,
        tokens: u64,
    ) -> Result<bucket::Outcome, Error> {
        let (mut states, n) = self.states(client, quotas, now);
        let outcome = bucket::refund(quotas, &mut states[..n], now, tokens)?;
        for (i, (q, &state)) in quotas.iter().zip(&states[..n]).enumerate() {
            let key = client.quota(i);
            if let Some(entry) = self.table.find_mut(key.hash(), |e| e.key == key) {
                // Fuller, so idle sooner: the sweep's bound must know.
                entry.set(state, state.full_after(q));
                let full_at = entry.full_at();
                self.note_write(full_at);
            }
        }
        Ok(outcome)
    }

    /// The states of the client's buckets under `quotas`, one per quota up to
    /// [`MAX_QUOTAS`], and how many: a bucket not held is full at `now`.
    fn states(
        &self,
        client: BucketKey,
        quotas: &[Quota],
        now: u64,
    ) -> ([BucketState; MAX_QUOTAS], usize) {
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
        (states, n)
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
    pub(crate) fn sweep(&mut self, now: u64) -> usize {
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
