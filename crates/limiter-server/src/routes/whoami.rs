//! `GET /v1/whoami`, guarded: who the middleware took the caller for.

use axum::extract::Extension;
use axum::response::{IntoResponse, Response};
use limiter_http::RateLimitInfo;
use serde_json::json;

pub(crate) async fn whoami(Extension(info): Extension<RateLimitInfo>) -> Response {
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
