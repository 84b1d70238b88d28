//! A limiter that cannot decide never turns into a 500.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use http::StatusCode;
use limiter_http::OnError;
use support::*;

#[tokio::test]
async fn by_default_the_request_is_served_without_limit_headers() {
    let app = app(layer(Arc::new(Broken)));
    let res = send(&app, request("198.51.100.1:1", &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn fail_closed_answers_503_with_retry_after() {
    let app = app(layer(Arc::new(Broken)).on_error(OnError::Deny));
    let res = send(&app, request("198.51.100.1:1", &[])).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&res, "retry-after"), Some("1"));
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
}

#[tokio::test]
async fn a_missing_peer_address_is_a_clear_answer() {
    let app = app(layer(Counted::new()));
    let req = http::Request::builder()
        .uri("/")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = send(&app, req).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_json(res).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("client's address")
    );
}

#[tokio::test]
async fn a_handler_reading_the_info_still_answers_when_the_limiter_fails() {
    use axum::Extension;
    use axum::routing::get;
    use limiter_http::RateLimitInfo;

    let app = axum::Router::new()
        .route(
            "/me",
            get(|Extension(info): Extension<RateLimitInfo>| async move {
                format!("{} {:?}", info.tier, info.decision.map(|d| d.remaining))
            }),
        )
        .layer(layer(Arc::new(Broken)));
    let mut req = request("198.51.100.1:1", &[]);
    *req.uri_mut() = "/me".parse().unwrap();
    let res = send(&app, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "anonymous None");
}
