//! problem+json answers in axum's terms.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Map;

/// An RFC 9457 problem: a status and a detail that names what was wrong.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) detail: String,
}

impl Problem {
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        limiter_http::problem(self.status, &self.detail, Map::new())
            .map(axum::body::Body::from)
            .into_response()
    }
}
