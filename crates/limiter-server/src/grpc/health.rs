//! The standard gRPC health service (`grpc.health.v1`), following readiness: `SERVING`
//! once started and until draining, `NOT_SERVING` otherwise. A worker answering from memory
//! while Redis is away is serving (it decides, and says so in `/health/ready` and the
//! metrics).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::state::AppState;

/// The service name Envoy's health checks may ask for, besides the server's (`""`).
pub(crate) const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// How often readiness is looked at besides when it is said to change.
const EVERY: Duration = Duration::from_secs(1);

/// Says `SERVING` or `NOT_SERVING` for the server and the rate limit service.
pub(crate) async fn set(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE, status).await;
}

/// Keeps `reporter` in step with readiness until the task is dropped.
pub(crate) async fn follow(state: AppState, reporter: HealthReporter) {
    let mut last = Some(false); // `serve` said NOT_SERVING before starting
    loop {
        // Listening before looking: a change between the look and the wait is not lost.
        let changed = state.phase.notified();
        let mut changed = std::pin::pin!(changed);
        changed.as_mut().enable();
        let serving =
            state.started.load(Ordering::Acquire) && !state.draining.load(Ordering::Acquire);
        if last != Some(serving) {
            set(&reporter, serving).await;
            tracing::debug!(serving, "grpc health");
            last = Some(serving);
        }
        let _ = tokio::time::timeout(EVERY, changed).await;
    }
}
