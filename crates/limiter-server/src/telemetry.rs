//! Prometheus metrics: the per-check series that `limiter-http` records, plus the backend's
//! state read at scrape time.

use std::sync::OnceLock;

use limiter_core::ErrorKind;
use limiter_fallback::{CircuitState, FallbackStats};
use limiter_http::telemetry::BACKEND_LATENCY;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 50 µs (a local Redis) to 250 ms (past any deadline).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// The process's Prometheus recorder, installed on first use (metrics are process-wide).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(BACKEND_LATENCY.to_owned()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; ours then simply stays empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only the backend state");
            }
            handle
        })
        .clone()
}

/// Publishes the fallback's state and counters (absolute values, read at scrape time).
pub(crate) fn record_fallback(stats: &FallbackStats) {
    for state in [
        CircuitState::Closed,
        CircuitState::Open,
        CircuitState::HalfOpen,
        CircuitState::Partial,
    ] {
        metrics::gauge!("ratelimit_fallback_state", "state" => state.as_str())
            .set(if stats.state == state { 1.0 } else { 0.0 });
    }
    metrics::gauge!("ratelimit_fallback_active").set(if stats.state == CircuitState::Closed {
        0.0
    } else {
        1.0
    });
    // The share of clients' hash slots answered by the fallback: 1 while Redis is down as
    // a whole, a fraction while some cluster masters are.
    metrics::gauge!("ratelimit_fallback_degraded_keyspace_ratio").set(stats.degraded_share());
    for (kind, n) in [
        ("unavailable", stats.unavailable_errors),
        ("timeout", stats.timeouts),
        ("other", stats.other_errors),
    ] {
        metrics::counter!("ratelimit_redis_errors_total", "kind" => kind).absolute(n);
    }
    // The same failures in detail: out of memory, authentication, a bad reply…
    for kind in ErrorKind::ALL {
        if kind != ErrorKind::InvalidInput {
            metrics::counter!("ratelimit_redis_failures_total", "kind" => kind.as_str())
                .absolute(stats.errors(kind));
        }
    }
    metrics::counter!("ratelimit_fallback_opened_total").absolute(stats.opened);
    metrics::counter!("ratelimit_fallback_probes_total").absolute(stats.probes);
    metrics::counter!("ratelimit_degraded_decisions_total").absolute(stats.degraded_decisions);
}
