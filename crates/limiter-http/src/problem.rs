//! RFC 9457 problem+json responses: the 429 of a denial, a rejection, a limiter that could
//! not decide.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use limiter_core::{Decision, Policy, ceil_millis, ceil_secs};
use serde_json::{Map, Value, json};

use crate::headers::insert_rate_limit_headers;

/// An RFC 9457 problem+json response: `type` `about:blank`, the status's reason as
/// `title`, a `detail`, and any `extra` members.
pub fn problem(status: StatusCode, detail: &str, extra: Map<String, Value>) -> Response<Bytes> {
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Value::Object(members) = &mut body {
        members.extend(extra);
    }
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// The 429 for a denied `decision`: problem+json with the tier, the wait in milliseconds,
/// and every rate-limit field.
pub fn too_many_requests(policy: &Policy, decision: &Decision) -> Response<Bytes> {
    let mut response = too_many_requests_body(policy, decision, None);
    insert_rate_limit_headers(response.headers_mut(), policy, decision);
    response
}

/// The 429 without its rate-limit fields, for a caller that adds them itself.
pub(crate) fn too_many_requests_body(
    policy: &Policy,
    decision: &Decision,
    reason: Option<&'static str>,
) -> Response<Bytes> {
    let wait = decision.retry_after.unwrap_or_default();
    let mut extra = Map::new();
    extra.insert("policy".into(), policy.name().into());
    // Rounded up, as Retry-After is: a client that waits this long is not early.
    extra.insert("retry_after_ms".into(), ceil_millis(wait).into());
    if let Some(reason) = reason {
        extra.insert("reason".into(), reason.into());
    }
    let detail = format!(
        "rate limit of policy {} exceeded; retry in {} s",
        policy.name(),
        ceil_secs(wait)
    );
    problem(StatusCode::TOO_MANY_REQUESTS, &detail, extra)
}
