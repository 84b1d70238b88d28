//! The whole keyspace's circuit: opened by the first outage, probed while open, closed by
//! the first answer.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use limiter_core::RateLimiter;

use crate::Inner;

/// The whole keyspace's circuit, as stored in an atomic.
pub(crate) const CLOSED: u8 = 0;
pub(crate) const OPEN: u8 = 1;
pub(crate) const HALF_OPEN: u8 = 2;

impl<P, L> Inner<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    /// Closed → open, once per outage: the caller that wins starts the probe.
    pub(crate) fn open(self: &Arc<Self>, reason: &dyn fmt::Display) {
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.counters.opened.fetch_add(1, Ordering::Relaxed);
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
        inner.counters.probes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "limiter_fallback", from = "open", to = "half_open", "probing the primary");
        let result = tokio::time::timeout(inner.config.deadline, inner.primary.ping()).await;
        let Err(reason) = inner.counters.probed(result) else {
            inner.state.store(CLOSED, Ordering::Release);
            tracing::info!(
                target: "limiter_fallback",
                from = "half_open",
                to = "closed",
                "primary answered the probe: back on the primary"
            );
            return;
        };
        inner.state.store(OPEN, Ordering::Release);
        tracing::debug!(target: "limiter_fallback", from = "half_open", to = "open", %reason, "probe failed");
    }
}
