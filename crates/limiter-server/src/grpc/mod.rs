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
use std::time::Duration;

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

/// Longest a call may take before it is answered `CANCELLED`.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls in flight on one HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 1024;

/// A connection silent this long is pinged, and closed if the ping is not answered as long.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// After shutdown starts, how long calls in flight (and idle connections) have to finish.
const DRAIN: Duration = Duration::from_secs(5);

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
    // Not serving until readiness says otherwise (the reporter starts out `SERVING`).
    health::set(&reporter, false).await;
    let following = tokio::spawn(health::follow(rls.state.clone(), reporter));
    let watching = watch.map(|path| tokio::spawn(reload::watch(path, rls.config.clone())));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let served = tonic::transport::Server::builder()
        // A call is decided within the fallback's deadline; this bounds anything else.
        .timeout(CALL_TIMEOUT)
        .concurrency_limit_per_connection(STREAMS_PER_CONNECTION)
        .max_concurrent_streams(u32::try_from(STREAMS_PER_CONNECTION).ok())
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .add_service(health)
        .add_service(RateLimitServiceServer::new(rls).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Shutdown waits for every connection to close; a client watching health never does:
    // once shutdown starts, the calls in flight get `DRAIN` to finish.
    let drained = async {
        if stopped.await.is_ok() {
            tokio::time::sleep(DRAIN).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        served = served => served,
        () = drained => {
            tracing::warn!("gRPC connections still open {DRAIN:?} after shutdown; closing them");
            Ok(())
        }
    };
    following.abort();
    if let Some(watching) = watching {
        watching.abort();
    }
    result
}
