//! [`Throttled`]: a limiter that, while throttling is on, also holds chosen policies to a
//! tighter bucket of their own (the policy's quotas times a factor). The policy's own
//! buckets keep counting all along, so nothing is reset when throttling starts or stops,
//! and the tighter limit is exact while it lasts: a request must fit both, and one either
//! denies takes nothing from the other.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use limiter_core::{ClientKey, Decision, Error, Partitioned, Policy, Quota, RateLimiter};
use parking_lot::RwLock;

use super::latency::Latencies;

/// The tighter policies, by the id of the policy they tighten.
type Tight = RwLock<HashMap<u64, Option<Arc<Policy>>>>;

/// Throttling around any limiter.
pub(crate) struct Throttled {
    inner: Arc<dyn RateLimiter>,
    active: Arc<AtomicBool>,
    /// Policy name (a tier's or a rule's) → the share of its limit kept while throttling.
    factors: HashMap<String, f64>,
    tight: Tight,
    /// Where the latencies of checks Redis decided go.
    latencies: Arc<Latencies>,
}

impl std::fmt::Debug for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttled")
            .field("active", &self.active.load(Ordering::Relaxed))
            .field("factors", &self.factors)
            .finish_non_exhaustive()
    }
}

impl Throttled {
    pub(crate) fn new(
        inner: Arc<dyn RateLimiter>,
        active: Arc<AtomicBool>,
        factors: HashMap<String, f64>,
        latencies: Arc<Latencies>,
    ) -> Self {
        Self {
            inner,
            active,
            factors,
            tight: RwLock::new(HashMap::new()),
            latencies,
        }
    }

    /// `inner.check`, its latency noted when Redis decided.
    async fn timed(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        let started = Instant::now();
        let decided = self.inner.check(key, policy, cost).await;
        if let Ok(d) = &decided
            && d.backend == limiter_core::Backend::Redis
        {
            self.latencies.record(started.elapsed());
        }
        decided
    }

    /// The tighter policy for `policy` while throttling is on and it is chosen.
    fn tight(&self, policy: &Policy) -> Option<Arc<Policy>> {
        if !self.active.load(Ordering::Relaxed) || policy.is_unlimited() {
            return None;
        }
        let factor = *self.factors.get(policy.name())?;
        if let Some(tight) = self.tight.read().get(&policy.id()) {
            return tight.clone();
        }
        let tight = tighten(policy, factor).map(Arc::new);
        let mut cache = self.tight.write();
        if cache.len() >= 4_096 {
            cache.clear(); // policies are a handful; a caller minting them must not grow this
        }
        cache.insert(policy.id(), tight.clone());
        tight
    }
}

/// Counts a denial throttling caused.
fn throttled(policy: &Policy) {
    metrics::counter!("ratelimit_throttle_denials_total", "policy" => policy.name().to_owned())
        .increment(1);
}

/// The denial of a cost larger than the tighter bucket can ever hold.
fn beyond(tight: &Policy) -> Decision {
    Decision {
        allowed: false,
        limit: tight.quotas().first().map_or(0, Quota::capacity),
        remaining: 0,
        reset_after: std::time::Duration::ZERO,
        retry_after: None,
        backend: limiter_core::Backend::None,
        degraded: false,
        quota: Some(0),
    }
}

/// `policy` with every quota's rate and burst times `factor` (rounded down, at least 1),
/// named `<name>.throttled`.
pub(crate) fn tighten(policy: &Policy, factor: f64) -> Option<Policy> {
    let scale = |n: u64| ((n as f64 * factor).floor() as u64).max(1);
    let quotas: Option<Vec<Quota>> = policy
        .quotas()
        .iter()
        .map(|q| {
            Quota::new(scale(q.tokens()), q.period())
                .and_then(|t| t.allow_burst(scale(q.capacity())))
                .ok()
        })
        .collect();
    let name = policy.name();
    let name = format!("{}.throttled", &name[..name.len().min(54)]);
    Policy::new(name, quotas?).ok()
}

#[async_trait]
impl RateLimiter for Throttled {
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        let Some(tight) = self.tight(policy) else {
            return self.timed(key, policy, cost).await;
        };
        // The tighter bucket first: its denials, the common ones while throttling, cost one
        // call, and none once the deny cache holds them.
        let held = match self.timed(key, &tight, cost).await {
            Ok(held) => held,
            Err(e) if e.is_insufficient_capacity() => {
                throttled(policy);
                return Ok(beyond(&tight));
            }
            // The tighter bucket cannot decide: the policy's own bucket does; throttling
            // never turns a request into an error.
            Err(_) => return self.timed(key, policy, cost).await,
        };
        if !held.allowed {
            throttled(policy);
            return Ok(held);
        }
        match self.timed(key, policy, cost).await {
            // Both admit: report the one with less left, the limit that binds.
            Ok(own) if own.allowed => Ok(if held.remaining < own.remaining {
                held
            } else {
                own
            }),
            other => {
                // The policy's own bucket denies (or cannot decide): the request takes
                // nothing from the tighter one either.
                let _ = self.inner.refund(key, &tight, cost).await;
                other
            }
        }
    }

    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        let own = self.inner.peek(key, policy, cost).await?;
        match self.tight(policy) {
            Some(tight) if own.allowed => {
                Ok(self.inner.peek(key, &tight, cost).await.unwrap_or(own))
            }
            _ => Ok(own),
        }
    }

    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        if let Some(tight) = self.tight(policy) {
            let most = tight
                .quotas()
                .iter()
                .map(Quota::capacity)
                .min()
                .unwrap_or(tokens);
            let _ = self.inner.refund(key, &tight, tokens.min(most)).await;
        }
        self.inner.refund(key, policy, tokens).await
    }

    fn check_now(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Option<Result<Decision, Error>> {
        if self.tight(policy).is_some() {
            return None;
        }
        self.inner.check_now(key, policy, cost)
    }

    async fn ping(&self) -> Result<(), Error> {
        self.inner.ping().await
    }

    fn partitioning(&self) -> Option<&dyn Partitioned> {
        self.inner.partitioning()
    }
}
