//! The service built from a [`Config`]: its backend, identity, state and routes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use limiter_core::Tier;
use limiter_fallback::{DenyCache, Fallback, OutagePolicy};
use limiter_http::{OnError, RateLimitLayer};
use limiter_memory::MemoryLimiter;
use limiter_redis::{RedisConfig, RedisLimiter};

use crate::config::{Config, ConfigError};
use crate::fleet::Fleet;
use crate::routes::admin::AdminAuth;
use crate::state::{AppState, Backend};
use crate::throttle::Throttle;
use crate::{HttpLimits, grpc, routes, telemetry};

/// A built service: its router and the switches `main` flips.
#[derive(Clone, Debug)]
pub struct App {
    state: AppState,
    router: Router,
    /// The admin API, when it has an address of its own.
    admin_router: Option<Router>,
    /// Envoy's rate limit service, when `grpc_listen` turns it on; and the config to
    /// watch for changes.
    rls: Option<(grpc::Rls, Option<PathBuf>)>,
}

impl App {
    /// Builds the backend, identity and routes that `config` (as [`Config::load`] returns it)
    /// describes; each part's constructor refuses what it cannot use. Redis connections open
    /// on first use: the service starts (degraded) while Redis is down.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting a part refused.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let identity = config.check_own()?;
        let descriptors = config.rls()?;
        let hasher = config.hasher()?;
        let backend = backend(config)?;
        let throttle = config
            .throttle
            .enabled
            .then(|| Arc::new(Throttle::new(&config.throttle)));
        let limiter = match &throttle {
            Some(throttle) => throttle.wrap(backend.limiter()),
            None => backend.limiter(),
        };
        let throttling = throttle.as_ref().map(|t| t.switch());
        let fleet = Arc::new(Fleet::new(config, &backend, throttling)?);
        let admin = AdminAuth::new(config)?.map(Arc::new);
        let guard = RateLimitLayer::new(limiter.clone(), hasher.clone())
            .tiers(config.tiers.clone())
            .identify(identity)
            .rules(fleet.rules.clone())
            .observe(fleet.records.clone())
            .on_error(match config.fallback.outage {
                OutagePolicy::Deny => OnError::Deny,
                _ => OnError::Allow,
            });
        let guard = match &throttle {
            Some(throttle) => {
                let throttle = Arc::clone(throttle);
                guard.explain_denials(move |policy, decision| {
                    throttle.denied(policy, decision).then_some("throttled")
                })
            }
            None => guard,
        };
        let state = AppState {
            limiter,
            backend,
            hasher,
            tiers: Arc::new(config.tiers.clone()),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.http.body_read_timeout_ms),
            metrics: telemetry::prometheus(),
            started: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            phase: Arc::new(tokio::sync::Notify::new()),
            fleet,
            admin,
            throttle,
            addresses: config.addresses()?,
        };
        let separate = config.admin_listen.is_some();
        let router = routes::router(state.clone(), guard, !separate);
        let admin_router = separate
            .then(|| routes::admin::router(state.clone()))
            .flatten();
        let rls = config.grpc_listen.map(|_| {
            let rls = grpc::Rls {
                state: state.clone(),
                config: Arc::new(ArcSwap::from_pointee(descriptors)),
                headers: config.rls_response_headers,
            };
            (rls, config.rls_config.clone())
        });
        Ok(Self {
            state,
            router,
            admin_router,
            rls,
        })
    }

    /// The admin API's routes when `admin_listen` gives them an address of their own (and
    /// an admin token turns them on); otherwise they are part of [`router`](Self::router).
    pub fn admin_router(&self) -> Option<Router> {
        self.admin_router.clone()
    }

    /// The routes, to serve with [`serve`](crate::serve) (or axum's
    /// `into_make_service_with_connect_info::<SocketAddr>()`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves Envoy's rate limit service and the gRPC health service on `listener` until
    /// `shutdown` resolves, reloading the descriptor config when it changes; at once
    /// `Ok` when `grpc_listen` is not set.
    ///
    /// # Errors
    /// The gRPC server's, when it cannot serve.
    pub async fn serve_grpc(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        match &self.rls {
            Some((rls, watch)) => grpc::serve(listener, rls.clone(), watch.clone(), shutdown).await,
            None => Ok(()),
        }
    }

    /// Opens the backend's connections (within `[fallback] warm_up_ms`), then reports
    /// started. A Redis that does not answer is logged, not fatal: the fallback serves
    /// meanwhile.
    pub async fn start(&self) {
        // The rules first: they decide the first requests.
        self.state.fleet.start().await;
        if let Some(throttle) = &self.state.throttle {
            tokio::spawn(Arc::clone(throttle).run());
        }
        if let Backend::Redis(fallback, _) = &self.state.backend {
            match fallback.warm_up().await {
                Ok(()) => tracing::info!("redis answered"),
                Err(e) => {
                    tracing::warn!(error = %e, "redis unavailable at start: serving from memory until it answers")
                }
            }
        }
        self.state.started.store(true, Ordering::Release);
        self.state.phase.notify_waiters();
    }

    /// The address this worker's check API listens on, for the fleet's list of workers.
    pub fn advertise(&self, address: std::net::SocketAddr) {
        self.state.fleet.members.advertise(address.to_string());
    }

    /// From now on readiness says `draining`, so balancers stop sending new requests.
    pub fn drain(&self) {
        self.state.draining.store(true, Ordering::Release);
        self.state.phase.notify_waiters();
    }

    /// The HTTP server's limits from `config`, for [`serve`](crate::serve).
    pub fn http_limits(config: &Config) -> HttpLimits {
        config.http.limits()
    }

    /// `"redis"` or `"memory"`.
    pub fn backend_name(&self) -> &'static str {
        match self.state.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(..) => "redis",
        }
    }
}

/// Memory alone, or Redis with memory for outages and a deny cache in front.
fn backend(config: &Config) -> Result<Backend, ConfigError> {
    let memory = Arc::new(MemoryLimiter::new(config.memory)?);
    let Some(url) = &config.redis_url else {
        return Ok(Backend::Memory(memory));
    };
    let redis = RedisLimiter::new(RedisConfig {
        url: url.clone(),
        ..config.redis.clone()
    })
    .map_err(|e| ConfigError::refused("redis_url", e))?;
    let fallback = Fallback::new(redis, memory, config.fallback)?;
    // Each tier's fleet share, now rather than on the first check of an outage.
    for tier in Tier::ALL {
        fallback.prepare(config.tiers.get(tier));
    }
    let fallback = Arc::new(fallback);
    let denials = (config.deny_cache_entries > 0)
        .then(|| Arc::new(DenyCache::new(fallback.clone(), config.deny_cache_entries)));
    Ok(Backend::Redis(fallback, denials))
}
