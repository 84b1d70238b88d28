//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`) over gRPC,
//! with the standard health service, on an address of its own (`grpc_listen`).
//!
//! Descriptors are looked up in the descriptor config (`rls_config`, the reference
//! service's YAML, see `limiter-rls`), which is reloaded when its files change; each
//! matched descriptor is decided by the same limiter as `POST /v1/check` (Redis, memory
//! during an outage), under the same kill switch, and recorded in the same statistics.
//! See `docs/envoy.md`.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use limiter_rls::RlsConfig;
use tokio::net::TcpListener;

mod health;
mod reload;
mod service;

pub(crate) use service::Rls;

/// The largest `ShouldRateLimit` request read, in bytes (Envoy's are a few hundred; tonic's
/// default would read 4 MiB from anyone).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The descriptor config in force, swapped whole on reload.
pub(crate) type LiveConfig = Arc<ArcSwap<RlsConfig>>;

/// Serves the rate limit and health services on `listener` until `shutdown` resolves,
/// then finishes the calls in flight. Reloads the config from `watch`, if given.
pub(crate) async fn serve(
    listener: TcpListener,
    rls: Rls,
    watch: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let following = tokio::spawn(health::follow(rls.state.clone(), reporter));
    let watching = watch.map(|path| tokio::spawn(reload::watch(path, rls.config.clone())));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(RateLimitServiceServer::new(rls).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    following.abort();
    if let Some(watching) = watching {
        watching.abort();
    }
    served
}
