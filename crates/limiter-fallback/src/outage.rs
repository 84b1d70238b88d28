//! What a check gets while the primary cannot decide: the outage policy, on this worker's
//! share of the limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use limiter_core::{Backend, ClientKey, Decision, Error, Policy, Quota, RateLimiter};
use parking_lot::RwLock;

use crate::{Inner, Op, OutagePolicy};

/// Fleet-share policies kept before the cache starts over.
const MAX_CACHED_SHARES: usize = 1_024;

/// Fleet-share policies by the id of the policy they divide and the workers it is divided
/// by.
#[derive(Debug, Default)]
pub(crate) struct Shares(RwLock<HashMap<(u64, u32), Arc<Policy>>>);

impl<P, L> Inner<P, L>
where
    P: RateLimiter + 'static,
    L: RateLimiter + 'static,
{
    /// The outage policy's answer to a check, peek or refund the primary cannot decide. A
    /// peek answers what a check would; a refund gives back to memory what memory counted
    /// (with [`OutagePolicy::Fallback`]; the other policies count nothing, and report the
    /// bucket full).
    pub(crate) async fn degraded(
        &self,
        op: Op,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Result<Decision, Error> {
        if op == Op::Check {
            self.counters
                .degraded_decisions
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut decision = match (self.config.outage, op) {
            (OutagePolicy::Fallback, Op::Check | Op::Peek) => {
                let share = self.share(policy);
                let local = match op {
                    Op::Peek => self.local.peek(key, &share, cost).await,
                    _ => self.local.check(key, &share, cost).await,
                };
                match local {
                    Ok(d) => d,
                    // The cost fits the global quota (checked before) but not this worker's
                    // share of it: memory denies it for now rather than fail a valid request.
                    Err(e) if e.is_insufficient_capacity() => self.beyond_share(&share, cost),
                    Err(e) => return Err(e),
                }
            }
            (OutagePolicy::Fallback, Op::Refund) => {
                let share = self.share(policy);
                // The tokens fit the policy (validated) but may not fit this worker's share
                // of it, which never took more than its smallest burst in one check: give
                // back at most that (less than asked for to a quota with a larger share,
                // never more; a refund is capped at full anyway).
                let smallest = share.quotas().iter().map(Quota::capacity).min();
                let tokens = smallest.map_or(cost, |s| cost.min(s));
                self.local.refund(key, &share, tokens).await?
            }
            (OutagePolicy::Allow, _) | (OutagePolicy::Deny, Op::Refund) => {
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
            (OutagePolicy::Deny, Op::Check | Op::Peek) => self.refusal(policy),
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
            backend: Backend::Memory,
            limit: quotas.get(quota).map_or(0, Quota::capacity),
            quota: Some(quota),
            ..self.refusal(share)
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

    /// The workers a limit is divided by: the live fleet last seen, never fewer than
    /// `expected_workers`.
    pub(crate) fn workers(&self) -> u32 {
        self.config
            .expected_workers
            .max(self.fleet.load(Ordering::Relaxed))
    }

    /// This worker's share of `policy` ([`Policy::share`] by [`workers`](Self::workers)),
    /// computed once per policy and fleet size.
    pub(crate) fn share(&self, policy: &Policy) -> Arc<Policy> {
        let Some(workers) = NonZeroU32::new(self.workers()).filter(|n| n.get() > 1) else {
            return Arc::new(policy.clone());
        };
        let id = (policy.id(), workers.get());
        if let Some(share) = self.shares.0.read().get(&id) {
            return share.clone();
        }
        let share = Arc::new(policy.share(workers));
        let mut shares = self.shares.0.write();
        // Policies are normally a handful of configured tiers; a caller minting policies per
        // request must not grow this without bound.
        if shares.len() >= MAX_CACHED_SHARES {
            shares.clear();
        }
        shares.insert(id, share.clone());
        share
    }
}
