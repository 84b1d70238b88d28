//! The admin API, `/v1/admin/*`: rules (`rules.rs`), violations, statistics, the audit
//! log and the workers (`records.rs`), behind bearer tokens or a dashboard session
//! (`auth.rs`); and the dashboard that reads it (`dashboard/`). Off unless a token is
//! configured.

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::{ETAG, HeaderMap, HeaderValue, IF_MATCH};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use limiter_rules::RuleError;
use serde_json::{Map, Value};

use crate::state::AppState;

mod auth;
mod dashboard;
mod records;
mod rules;

pub(crate) use auth::AdminAuth;

/// The admin API served on an address of its own; `None` when no token is configured.
pub(crate) fn router(state: AppState) -> Option<Router> {
    let routes = routes(&state)?;
    // The dashboard reads readiness (Redis's health) from the address it is served on.
    let routes = routes.route("/health/ready", get(super::health::ready));
    Some(routes.fallback(super::not_found).with_state(state))
}

/// The admin routes, behind the token check; `None` when no token is configured.
pub(crate) fn routes(state: &AppState) -> Option<Router<AppState>> {
    state.admin.as_ref()?;
    let routes = Router::new()
        .route("/v1/admin/rules", get(rules::list).post(rules::create))
        .route("/v1/admin/rules/export", get(rules::export))
        .route("/v1/admin/rules/import", put(rules::import))
        .route(
            "/v1/admin/rules/{name}",
            get(rules::one)
                .put(rules::replace)
                .patch(rules::update)
                .delete(rules::remove),
        )
        .route(
            "/v1/admin/enforcement",
            get(rules::enforcement).post(rules::set_enforcement),
        )
        .route("/v1/admin/explain", post(rules::explain))
        .route("/v1/admin/violations", get(records::violations))
        .route("/v1/admin/stats", get(records::stats))
        .route("/v1/admin/audit", get(records::audit))
        .route("/v1/admin/workers", get(records::workers))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Some(routes.merge(dashboard::routes()))
}

/// A refusal on its way to being answered: a problem response, boxed so that `Result`s
/// carrying one stay small.
#[derive(Debug)]
pub(crate) struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A problem+json answer, naming `field` when there is one.
pub(crate) fn problem(status: StatusCode, field: Option<&str>, detail: &str) -> Response {
    let mut extra = Map::new();
    if let Some(field) = field {
        extra.insert("field".into(), Value::from(field));
    }
    let detail = match field {
        Some(field) if !detail.starts_with(field) => format!("{field}: {detail}"),
        _ => detail.to_owned(),
    };
    limiter_http::problem(status, &detail, extra)
        .map(axum::body::Body::from)
        .into_response()
}

/// 400 for a rule error, naming its field.
pub(crate) fn invalid(e: &RuleError) -> Response {
    problem(StatusCode::BAD_REQUEST, Some(e.field()), e.reason())
}

/// The `ETag` of a document version.
pub(crate) fn etag(version: u64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The version `If-Match` names: `None` without the header (or with `*`); `Err` for a
/// value that can name no version, which matches nothing (412).
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let tag = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    tag.parse().map(Some).map_err(|_| {
        problem(
            StatusCode::PRECONDITION_FAILED,
            Some("If-Match"),
            "names no version of the rules: use the ETag of GET /v1/admin/rules",
        )
        .into()
    })
}

/// `response` with the `ETag` of `version`.
pub(crate) fn tagged(mut response: Response, version: u64) -> Response {
    response.headers_mut().insert(ETAG, etag(version));
    response
}
