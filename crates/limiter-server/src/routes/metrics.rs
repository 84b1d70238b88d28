//! `GET /metrics`: Prometheus text, the backend's state read at scrape time.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::state::{AppState, Backend};
use crate::telemetry;

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    if let Backend::Redis(fallback, denials) = &state.backend {
        telemetry::record_fallback(&fallback.stats());
        if let Some(denials) = denials {
            metrics::counter!("ratelimit_deny_cache_hits_total").absolute(denials.hits());
        }
    }
    // The rules in force: alert on `ratelimit_rules_stale == 1` (Redis unreadable, the
    // last rules kept) or on workers whose versions differ.
    let (fresh, _) = state.fleet.health();
    let rules = state.fleet.rules.current();
    metrics::gauge!("ratelimit_rules_version").set(rules.version() as f64);
    metrics::gauge!("ratelimit_rules").set(rules.len() as f64);
    metrics::gauge!("ratelimit_rules_stale").set(if fresh { 0.0 } else { 1.0 });
    metrics::gauge!("ratelimit_rules_enforce").set(if rules.enforce() { 1.0 } else { 0.0 });
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
