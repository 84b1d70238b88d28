//! One circuit per part of a partitioned primary's keyspace (a cluster's hash slots): a
//! failed check opens its part and, if the part does not answer a ping, every part that
//! lives with it; one probe task closes them when they answer.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use limiter_core::{ClientKey, Error, RateLimiter};
use tokio::sync::Notify;

use crate::Inner;

/// The parts' circuits (`true` = open); empty for a primary that is up or down as a whole.
#[derive(Debug)]
pub(crate) struct Parts {
    open: Box<[AtomicBool]>,
    open_count: AtomicUsize,
    /// Whether the probe task was started (it then runs for the fallback's life).
    probe_started: AtomicBool,
    /// Wakes the probe when a part opens.
    wake: Arc<Notify>,
}

impl Parts {
    /// `count` parts, all closed; none when `count` is 1.
    pub(crate) fn new(count: usize) -> Self {
        let open = if count > 1 {
            (0..count).map(|_| AtomicBool::new(false)).collect()
        } else {
            Box::default()
        };
        Self {
            open,
            open_count: AtomicUsize::new(0),
            probe_started: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        }
    }

    /// True when the primary is whole (not partitioned).
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// How many parts there are, at least 1.
    pub(crate) fn len(&self) -> usize {
        self.open.len().max(1)
    }

    /// Whether part `p` is open now.
    pub(crate) fn is_open(&self, p: usize) -> bool {
        self.open.get(p).is_some_and(|o| o.load(Ordering::Acquire))
    }

    /// Parts open now, at most all of them.
    pub(crate) fn open_count(&self) -> usize {
        self.open_count.load(Ordering::SeqCst).min(self.open.len())
    }

    /// Opens the closed parts among `range`; returns how many were, and how many are open
    /// in all then.
    fn open_in(&self, range: Range<usize>) -> (usize, usize) {
        let mut opened = 0;
        for part in &self.open[range] {
            // Counted before it shows, so the count never drops below what is shown open.
            self.open_count.fetch_add(1, Ordering::SeqCst);
            if part.swap(true, Ordering::SeqCst) {
                self.open_count.fetch_sub(1, Ordering::SeqCst);
            } else {
                opened += 1;
            }
        }
        (opened, self.open_count.load(Ordering::SeqCst))
    }

    /// Closes the open parts among `range`, which answered a probe.
    fn close(&self, range: Range<usize>) {
        for part in &self.open[range] {
            if part.swap(false, Ordering::SeqCst) {
                self.open_count.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// The runs of consecutive open parts now.
    fn open_runs(&self) -> Vec<Range<usize>> {
        let mut runs = Vec::new();
        let mut start = None;
        for (i, part) in self.open.iter().enumerate() {
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
            runs.push(s..self.open.len());
        }
        runs
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        // Lets the probe see the fallback is gone and end.
        self.wake.notify_one();
    }
}

impl<P, L> Inner<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    /// The part of the primary's keyspace that holds `key` (0 for a whole primary).
    pub(crate) fn partition_of(&self, key: &ClientKey) -> usize {
        self.primary
            .partitioning()
            .map_or(0, |p| p.partition_of(key))
    }

    async fn ping_partition(&self, partition: usize) -> Result<(), Error> {
        match self.primary.partitioning() {
            Some(parts) => parts.ping_partition(partition).await,
            None => self.primary.ping().await,
        }
    }

    #[allow(
        clippy::single_range_in_vec_init,
        reason = "one range: the partition alone"
    )]
    async fn colocated(&self, partition: usize) -> Vec<Range<usize>> {
        match self.primary.partitioning() {
            Some(parts) => parts.colocated(partition).await,
            None => vec![partition..partition + 1],
        }
    }

    /// Part `p` closed → open: its clients go to the outage policy, and the parts' probe is
    /// woken. If `p` does not answer a ping either, the parts that live with it (its
    /// master's other slots) open too, so their clients do not each wait out a deadline.
    pub(crate) fn open_part(self: &Arc<Self>, p: usize, reason: &dyn std::fmt::Display) {
        if p >= self.parts.open.len() {
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
            if let Ok(Ok(())) = tokio::time::timeout(wait, this.ping_partition(p)).await {
                if asked.elapsed() <= this.config.deadline {
                    this.parts.close(p..p + 1);
                    tracing::info!(target: "limiter_fallback", partition = p, "part answered at once: back on the primary");
                }
                return;
            }
            for run in this.colocated(p).await {
                let end = run.end.min(this.parts.open.len());
                this.open_parts_in(run.start.min(end)..end);
            }
        });
    }

    /// Opens the closed parts among `range`; true if any was. The first part to open after
    /// none was counts as an outage, and wakes the parts' probe.
    fn open_parts_in(self: &Arc<Self>, range: Range<usize>) -> bool {
        let (opened, open) = self.parts.open_in(range);
        if opened == 0 {
            return false;
        }
        if open == opened {
            self.counters.opened.fetch_add(1, Ordering::Relaxed);
        }
        if !self.parts.probe_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(probe_parts(
                Arc::downgrade(self),
                Arc::clone(&self.parts.wake),
            ));
        }
        self.parts.wake.notify_one();
        true
    }

    /// Pings one part of `run` and, if it answers, closes the parts of the run that live
    /// with it; the rest of the run is left for its own pings.
    async fn probe_run(&self, run: Range<usize>) {
        self.counters.probes.fetch_add(1, Ordering::Relaxed);
        let ping = self.ping_partition(run.start);
        let result = tokio::time::timeout(self.config.deadline, ping).await;
        if let Err(reason) = self.counters.probed(result) {
            tracing::debug!(target: "limiter_fallback", partitions = ?run, %reason, "probe failed");
            return;
        }
        for range in self.colocated(run.start).await {
            let (start, end) = (range.start.max(run.start), range.end.min(run.end));
            if start < end {
                self.parts.close(start..end);
            }
        }
        self.parts.close(run.start..run.start + 1);
    }
}

/// The parts' probe, one task for the fallback's life, asleep while no part is open. Every
/// interval it pings, all at once, one part of every run of consecutive open parts; when it
/// answers, the parts of the run that live with it
/// ([`Partitioned::colocated`](limiter_core::Partitioned::colocated)) close. A part closed
/// too early (still down) reopens on its next failed check.
async fn probe_parts<P, L>(inner: Weak<Inner<P, L>>, wake: Arc<Notify>)
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    loop {
        let interval = {
            let Some(i) = inner.upgrade() else { return };
            if i.parts.open_count() == 0 {
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
        for run in i.parts.open_runs() {
            let this = Arc::clone(&i);
            pings.spawn(async move { this.probe_run(run).await });
        }
        drop(i);
        while pings.join_next().await.is_some() {}
        if inner.upgrade().is_some_and(|i| i.parts.open_count() == 0) {
            tracing::info!(
                target: "limiter_fallback",
                from = "partial",
                to = "closed",
                "every part answered: back on the primary"
            );
        }
    }
}
