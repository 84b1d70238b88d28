//! What every handler shares: the limiter, kept typed for health and metrics, and the
//! service's switches.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use limiter_core::{ClientKeyHasher, RateLimiter, TierPolicies};
use limiter_fallback::{DenyCache, Fallback};
use limiter_memory::MemoryLimiter;
use limiter_redis::RedisLimiter;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::fleet::Fleet;
use crate::routes::admin::AdminAuth;

/// Redis first, memory when Redis cannot decide.
pub(crate) type RedisFallback = Fallback<RedisLimiter, Arc<MemoryLimiter>>;

/// Which backend decides, kept typed for health and metrics.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Memory(Arc<MemoryLimiter>),
    Redis(
        Arc<RedisFallback>,
        Option<Arc<DenyCache<Arc<RedisFallback>>>>,
    ),
}

impl Backend {
    /// The limiter that decides: the deny cache in front of the fallback when there is one.
    pub(crate) fn limiter(&self) -> Arc<dyn RateLimiter> {
        match self {
            Backend::Memory(m) => m.clone(),
            Backend::Redis(_, Some(cached)) => cached.clone(),
            Backend::Redis(f, None) => f.clone(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) backend: Backend,
    pub(crate) hasher: ClientKeyHasher,
    pub(crate) tiers: Arc<TierPolicies>,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_read_timeout: Duration,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) started: Arc<AtomicBool>,
    pub(crate) draining: Arc<AtomicBool>,
    /// Woken when `started` or `draining` changes, for those that follow readiness.
    pub(crate) phase: Arc<tokio::sync::Notify>,
    /// Rules, statistics, violations: what the fleet shares besides buckets.
    pub(crate) fleet: Arc<Fleet>,
    /// The admin API's tokens; `None`: the admin API is off.
    pub(crate) admin: Option<Arc<AdminAuth>>,
    /// Load-aware throttling, when enabled.
    pub(crate) throttle: Option<Arc<crate::throttle::Throttle>>,
    /// How the guarded routes know anonymous clients by address (for the explain call).
    pub(crate) addresses: limiter_http::ClientIp,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}
