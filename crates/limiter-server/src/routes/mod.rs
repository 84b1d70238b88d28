//! The routes, one file per surface: `/v1/check` and `/v1/refund`, the guarded
//! `/v1/whoami`, `/metrics`, `/health/*`, and the admin API (`admin/`).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use limiter_http::RateLimitLayer;

use crate::problem::Problem;
use crate::state::AppState;

pub(crate) mod admin;
pub(crate) mod check;
mod health;
mod metrics;
mod whoami;

pub use check::MAX_CLIENT_LEN;

/// Every route of the service; `guard` limits the guarded ones. With `with_admin`, the
/// admin API too (when a token turns it on).
pub(crate) fn router(state: AppState, guard: RateLimitLayer, with_admin: bool) -> Router {
    let guarded = Router::new()
        .route("/v1/whoami", get(whoami::whoami))
        .route_layer(guard);
    let admin = with_admin
        .then(|| admin::routes(&state))
        .flatten()
        .unwrap_or_default();
    Router::new()
        .route("/v1/check", post(check::check))
        .route("/v1/refund", post(check::refund))
        .merge(admin)
        .route("/metrics", get(metrics::metrics))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/health/startup", get(health::startup))
        .merge(guarded)
        .fallback(not_found)
        .with_state(state)
}

pub(crate) async fn not_found() -> Problem {
    Problem {
        status: StatusCode::NOT_FOUND,
        detail: "no such route".into(),
    }
}
