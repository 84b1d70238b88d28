//! The routes, one file per surface: `/v1/check`, the guarded `/v1/whoami`, `/metrics`,
//! `/health/*`.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use limiter_http::RateLimitLayer;

use crate::problem::Problem;
use crate::state::AppState;

mod check;
mod health;
mod metrics;
mod whoami;

pub use check::MAX_CLIENT_LEN;

/// Every route of the service; `guard` limits the guarded ones.
pub(crate) fn router(state: AppState, guard: RateLimitLayer) -> Router {
    let guarded = Router::new()
        .route("/v1/whoami", get(whoami::whoami))
        .route_layer(guard);
    Router::new()
        .route("/v1/check", post(check::check))
        .route("/metrics", get(metrics::metrics))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/health/startup", get(health::startup))
        .merge(guarded)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Problem {
    Problem {
        status: StatusCode::NOT_FOUND,
        detail: "no such route".into(),
    }
}
