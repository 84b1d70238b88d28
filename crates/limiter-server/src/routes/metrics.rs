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
