//! The service: its state, built from a [`Config`], and its routes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use limiter_core::{ClientKeyHasher, RateLimiter, Tier, TierPolicies};
use limiter_fallback::DenyCache;
use limiter_fallback::{Fallback, OutagePolicy};
use limiter_http::{
    ApiKeyOrIp, ApiKeys, ClientIp, ForwardedHeader, OnError, RateLimitInfo, RateLimitLayer,
    UnknownKey,
};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_redis::{RedisConfig, RedisLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::config::{Config, ConfigError, ForwardedHeaderName, UnknownKeys, http_header_name};
use crate::problem::Problem;
use crate::{check, health, telemetry};

/// Redis first, memory when Redis is unavailable.
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
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// A built service: its router and the switches `main` flips.
#[derive(Clone, Debug)]
pub struct App {
    state: AppState,
    router: Router,
}

impl App {
    /// Builds the backend, identity and routes that `config` describes. Redis connections
    /// open on first use: the service starts (degraded) while Redis is down.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting a part refused.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let secret = match &config.hash_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => random_secret()?,
        };
        let hasher =
            ClientKeyHasher::new(&secret).map_err(|e| ConfigError::field("hash_secret", e))?;
        let memory = Arc::new(
            MemoryLimiter::new(MemoryConfig {
                max_buckets: config.memory.max_buckets,
            })
            .map_err(|e| ConfigError::field("memory.max_buckets", e))?,
        );
        let backend = match &config.redis_url {
            None => Backend::Memory(memory),
            Some(url) => {
                let mut redis = RedisConfig::from_url(url);
                redis.connections = config.redis.connections;
                redis.max_batch = config.redis.max_batch;
                redis.connect_timeout = Duration::from_millis(config.redis.connect_timeout_ms);
                redis.response_timeout = Duration::from_millis(config.redis.response_timeout_ms);
                let redis = RedisLimiter::new(redis).map_err(|e| {
                    ConfigError::field(
                        "redis_url",
                        format_args!("{} ({e})", limiter_redis::redacted(url)),
                    )
                })?;
                let fallback = Fallback::new(redis, memory, config.fallback)
                    .map_err(|e| ConfigError::field("fallback", e))?;
                // Each tier's fleet share, now rather than on the first check of an outage.
                for tier in Tier::ALL {
                    fallback.prepare(config.tiers.get(tier));
                }
                let fallback = Arc::new(fallback);
                let denials = (config.deny_cache_entries > 0)
                    .then(|| Arc::new(DenyCache::new(fallback.clone(), config.deny_cache_entries)));
                Backend::Redis(fallback, denials)
            }
        };
        let limiter: Arc<dyn RateLimiter> = match &backend {
            Backend::Memory(m) => m.clone(),
            Backend::Redis(_, Some(cached)) => cached.clone(),
            Backend::Redis(f, None) => f.clone(),
        };

        let mut keys = ApiKeys::new().unknown(match config.unknown_api_keys {
            UnknownKeys::Anonymous => UnknownKey::Anonymous,
            UnknownKeys::Reject => UnknownKey::Reject,
        });
        if let Some(header) = http_header_name(&config.api_key_header) {
            keys = keys.header(header);
        }
        for (i, entry) in config.api_keys.iter().enumerate() {
            keys = keys
                .with_hash(&entry.sha256, entry.tier)
                .map_err(|e| ConfigError::field(&format!("api_keys[{i}].sha256"), e))?;
        }
        let forwarded = match config.forwarded_header {
            ForwardedHeaderName::XForwardedFor => ForwardedHeader::XForwardedFor,
            ForwardedHeaderName::Forwarded => ForwardedHeader::Forwarded,
        };
        let addresses = ClientIp::new()
            .trust_proxies(config.trusted_proxies.iter().copied())
            .forwarded_header(forwarded)
            .key_prefixes(config.ipv4_prefix, config.ipv6_prefix)
            .map_err(|e| ConfigError::field("ipv6_prefix", e))?;
        let identify = ApiKeyOrIp::new(keys, addresses);
        let tiers = Arc::new(config.tiers.clone());
        let guard = RateLimitLayer::new(limiter.clone(), hasher.clone())
            .tiers(config.tiers.clone())
            .identify(identify)
            .on_error(match config.fallback.outage {
                OutagePolicy::Deny => OnError::Deny,
                _ => OnError::Allow,
            });

        let state = AppState {
            limiter,
            backend,
            hasher,
            tiers,
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.http.body_read_timeout_ms),
            metrics: telemetry::prometheus(),
            started: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
        };
        let guarded = Router::new()
            .route("/v1/whoami", get(whoami))
            .route_layer(guard);
        let router = Router::new()
            .route("/v1/check", post(check::check))
            .route("/metrics", get(metrics))
            .route("/health/live", get(health::live))
            .route("/health/ready", get(health::ready))
            .route("/health/startup", get(health::startup))
            .merge(guarded)
            .fallback(not_found)
            .with_state(state.clone());
        Ok(Self { state, router })
    }

    /// The routes, to serve with `into_make_service_with_connect_info::<SocketAddr>()`.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Opens the backend's connections (bounded by its timeouts), then reports started.
    /// A Redis that does not answer is logged, not fatal: the fallback serves meanwhile.
    pub async fn start(&self) {
        if let Backend::Redis(fallback, _) = &self.state.backend {
            // Opening every connection may take longer than one check's deadline.
            match fallback.warm_up().await {
                Ok(()) => tracing::info!("redis answered"),
                Err(e) => {
                    tracing::warn!(error = %e, "redis unavailable at start: serving from memory until it answers")
                }
            }
        }
        self.state.started.store(true, Ordering::Release);
    }

    /// From now on readiness says `draining`, so balancers stop sending new requests.
    pub fn drain(&self) {
        self.state.draining.store(true, Ordering::Release);
    }

    /// The HTTP server's limits from `config`, for [`serve`](crate::serve).
    pub fn http_limits(config: &Config) -> crate::HttpLimits {
        crate::HttpLimits {
            header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(config.http.keep_alive_timeout_ms),
            max_connections: config.http.max_connections,
        }
    }

    /// `"redis"` or `"memory"`.
    pub fn backend_name(&self) -> &'static str {
        match self.state.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(..) => "redis",
        }
    }
}

fn random_secret() -> Result<Vec<u8>, ConfigError> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| {
        ConfigError::field(
            "hash_secret",
            format_args!("none given and none could be made: {e}"),
        )
    })?;
    Ok(secret)
}

/// `GET /v1/whoami`, guarded: who the middleware took the caller for.
async fn whoami(Extension(info): Extension<RateLimitInfo>) -> Response {
    // No decision: the limiter failed and the request was let through.
    let limited = info.decision.filter(|d| d.quota.is_some());
    axum::Json(json!({
        "tier": info.tier,
        "client": info.client.to_string(),
        "limit": limited.map(|d| d.limit),
        "remaining": limited.map(|d| d.remaining),
        "backend": info.decision.map_or("none", |d| d.backend.as_str()),
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Backend::Redis(fallback, denials) = &state.backend {
        telemetry::record_fallback(&fallback.stats());
        if let Some(denials) = denials {
            metrics::counter!("ratelimit_deny_cache_hits_total").absolute(denials.hits());
        }
    }
    state.metrics.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem {
        status: StatusCode::NOT_FOUND,
        detail: "no such route".into(),
    }
}
