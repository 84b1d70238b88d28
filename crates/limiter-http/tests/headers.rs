//! What a client sees on allowed and denied responses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::StatusCode;
use limiter_core::{Policy, Quota, Tier, TierPolicies};
use support::*;

#[tokio::test]
async fn allowed_responses_carry_every_rate_limit_field() {
    let limiter = Counted::new();
    let app = app(layer(limiter.clone()));
    let res = send(&app, request("198.51.100.1:4000", &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_u64(&res, "x-ratelimit-limit"), 100);
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 99);
    // One token of 100/min refills in 0.6 s: the bucket is full again within a second.
    assert_eq!(header_u64(&res, "x-ratelimit-reset"), 1);
    assert_eq!(
        header(&res, "ratelimit-policy"),
        Some(r#""anonymous";q=100;w=60"#)
    );
    assert_eq!(header(&res, "ratelimit"), Some(r#""anonymous";r=99;t=1"#));
    assert!(header(&res, "retry-after").is_none());
    assert_eq!(limiter.calls(), 1);
}

#[tokio::test]
async fn the_101st_request_in_a_minute_is_429_with_a_problem_body() {
    let limiter = Counted::new();
    let app = app(layer(limiter.clone()));
    for i in 0..100 {
        let res = send(&app, request("198.51.100.2:4000", &[])).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 99 - i);
    }
    let res = send(&app, request("198.51.100.2:4000", &[])).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 0);
    assert_eq!(header_u64(&res, "x-ratelimit-limit"), 100);
    // 100 tokens refill in 60 s.
    assert_eq!(header_u64(&res, "x-ratelimit-reset"), 60);
    let retry_after = header_u64(&res, "retry-after");
    let t = sf_param(header(&res, "ratelimit").unwrap(), "t");
    assert_eq!(sf_param(header(&res, "ratelimit").unwrap(), "r"), 0);
    assert!(
        retry_after >= t,
        "Retry-After {retry_after} earlier than t={t}"
    );
    assert_eq!(retry_after, 1, "one token refills in 0.6 s, rounded up");

    let body = body_json(res).await;
    assert_eq!(body["status"], 429);
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["policy"], "anonymous");
    assert_eq!(body["retry_after_ms"], 600);
    // The advertised whole seconds cover the true wait.
    assert!(retry_after * 1000 >= body["retry_after_ms"].as_u64().unwrap());
    assert!(body["detail"].as_str().unwrap().contains("retry in 1 s"));

    // Another client is untouched.
    let res = send(&app, request("198.51.100.3:4000", &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn retry_after_is_honest_for_a_real_wait() {
    let limiter = Counted::new();
    let app = app(layer(limiter.clone()));
    for _ in 0..100 {
        send(&app, request("198.51.100.4:4000", &[])).await;
    }
    let res = send(&app, request("198.51.100.4:4000", &[])).await;
    let wait = Duration::from_secs(header_u64(&res, "retry-after"));
    // Just before the advertised time a retry may still be early; at it, it passes.
    limiter.clock.advance(wait);
    let res = send(&app, request("198.51.100.4:4000", &[])).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "retry at Retry-After was refused"
    );
}

#[tokio::test]
async fn multi_quota_policies_list_every_quota_and_report_the_denying_one() {
    let mut tiers = TierPolicies::default();
    tiers
        .set(
            Tier::Anonymous,
            [
                Quota::per_second(2).unwrap(),
                Quota::new(10, Duration::from_secs(3600)).unwrap(),
            ],
        )
        .unwrap();
    let limiter = Counted::new();
    let app = app(layer(limiter.clone()).tiers(tiers));
    let ok = send(&app, request("198.51.100.5:1", &[])).await;
    assert_eq!(
        header(&ok, "ratelimit-policy"),
        Some(r#""anonymous.0";q=2;w=1, "anonymous.1";q=10;w=3600"#)
    );
    send(&app, request("198.51.100.5:1", &[])).await;
    let denied = send(&app, request("198.51.100.5:1", &[])).await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    let rl = header(&denied, "ratelimit").unwrap();
    assert!(rl.starts_with(r#""anonymous.0";r=0;"#), "{rl}");
    assert!(header_u64(&denied, "retry-after") >= sf_param(rl, "t"));
    let _ = Policy::unlimited("unused").unwrap();
}

#[tokio::test]
async fn admin_passes_without_a_backend_call_or_limit_headers() {
    let keys = limiter_http::ApiKeys::new()
        .with_hash(
            &limiter_http::ApiKeys::hash_key("admin-key-000000000"),
            Tier::Admin,
        )
        .unwrap();
    let limiter = Counted::new();
    let app = app(
        layer(limiter.clone()).identify(limiter_http::ApiKeyOrIp::new(
            keys,
            limiter_http::ClientIp::new(),
        )),
    );
    for _ in 0..500 {
        let res = send(
            &app,
            request("198.51.100.6:1", &[("x-api-key", "admin-key-000000000")]),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(header(&res, "x-ratelimit-limit").is_none());
    }
    assert_eq!(limiter.calls(), 0);
}
