//! Who a request is counted as: API keys by hash, addresses, and spoofing attempts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::StatusCode;
use limiter_core::Tier;
use limiter_http::{ApiKeyOrIp, ApiKeys, ClientIp, UnknownKey};
use support::*;

fn keys() -> ApiKeys {
    ApiKeys::new()
        .with_hash(&ApiKeys::hash_key("k-premium-aaaaaaaaaaaa"), Tier::Premium)
        .unwrap()
        .with_hash(&ApiKeys::hash_key("k-basic-bbbbbbbbbbbbbb"), Tier::ApiKey)
        .unwrap()
}

#[tokio::test]
async fn api_keys_get_their_tier_limits() {
    let app = app(layer(Counted::new()).identify(ApiKeyOrIp::new(keys(), ClientIp::new())));
    let premium = send(
        &app,
        request("198.51.100.1:1", &[("x-api-key", "k-premium-aaaaaaaaaaaa")]),
    )
    .await;
    assert_eq!(header_u64(&premium, "x-ratelimit-limit"), 5000);
    let basic = send(
        &app,
        request("198.51.100.1:1", &[("x-api-key", "k-basic-bbbbbbbbbbbbbb")]),
    )
    .await;
    assert_eq!(header_u64(&basic, "x-ratelimit-limit"), 1000);
    // Same peer, no key: anonymous, its own bucket.
    let anon = send(&app, request("198.51.100.1:1", &[])).await;
    assert_eq!(header_u64(&anon, "x-ratelimit-limit"), 100);
    assert_eq!(header_u64(&anon, "x-ratelimit-remaining"), 99);
}

#[tokio::test]
async fn one_key_is_one_bucket_from_any_address() {
    let app = app(layer(Counted::new()).identify(ApiKeyOrIp::new(keys(), ClientIp::new())));
    let a = send(
        &app,
        request("198.51.100.1:1", &[("x-api-key", "k-basic-bbbbbbbbbbbbbb")]),
    )
    .await;
    let b = send(
        &app,
        request("203.0.113.9:1", &[("x-api-key", "k-basic-bbbbbbbbbbbbbb")]),
    )
    .await;
    assert_eq!(header_u64(&a, "x-ratelimit-remaining"), 999);
    assert_eq!(header_u64(&b, "x-ratelimit-remaining"), 998);
}

#[tokio::test]
async fn unknown_keys_are_anonymous_or_401() {
    let lenient = app(layer(Counted::new()).identify(ApiKeyOrIp::new(keys(), ClientIp::new())));
    let res = send(
        &lenient,
        request("198.51.100.1:1", &[("x-api-key", "made-up")]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_u64(&res, "x-ratelimit-limit"), 100);

    let strict = app(layer(Counted::new()).identify(ApiKeyOrIp::new(
        keys().unknown(UnknownKey::Reject),
        ClientIp::new(),
    )));
    let res = send(
        &strict,
        request("198.51.100.1:1", &[("x-api-key", "made-up")]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    let body = body_json(res).await;
    assert_eq!(body["detail"], "unknown API key");
}

#[tokio::test]
async fn spoofed_forwarding_headers_from_an_untrusted_peer_change_nothing() {
    let trusted = ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    let app = app(layer(Counted::new()).identify(trusted));
    let attacker = "198.51.100.66:5555";
    for i in 0..100u64 {
        // A fresh forged address every time: were it believed, every request would
        // start a fresh bucket.
        let forged = format!("203.0.113.{}", i % 250);
        let res = send(
            &app,
            request(
                attacker,
                &[
                    ("x-forwarded-for", forged.as_str()),
                    ("forwarded", &format!("for={forged}")),
                ],
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 99 - i);
    }
    let res = send(&app, request(attacker, &[("x-forwarded-for", "192.0.2.1")])).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_trusted_proxy_is_believed() {
    let trusted = ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    let app = app(layer(Counted::new()).identify(trusted));
    let via_lb = |client: &'static str| request("10.1.2.3:80", &[("x-forwarded-for", client)]);
    let a = send(&app, via_lb("203.0.113.1")).await;
    let b = send(&app, via_lb("203.0.113.2")).await;
    let a2 = send(&app, via_lb("203.0.113.1")).await;
    assert_eq!(header_u64(&a, "x-ratelimit-remaining"), 99);
    assert_eq!(header_u64(&b, "x-ratelimit-remaining"), 99);
    assert_eq!(header_u64(&a2, "x-ratelimit-remaining"), 98);
}

#[tokio::test]
async fn a_forwarded_header_through_a_trusted_proxy_changes_nothing() {
    // The load balancer writes X-Forwarded-For and passes the client's Forwarded along.
    let trusted = ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    let app = app(layer(Counted::new()).identify(trusted));
    for i in 0..100u64 {
        let forged = format!("for=203.0.113.{}", i % 250);
        let res = send(
            &app,
            request(
                "10.0.0.2:80",
                &[("forwarded", &forged), ("x-forwarded-for", "198.51.100.9")],
            ),
        )
        .await;
        assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 99 - i);
    }
}

#[tokio::test]
async fn huge_header_values_are_answered_not_panicked_on() {
    let app = app(layer(Counted::new()).identify(ApiKeyOrIp::new(
        keys(),
        ClientIp::new().trust_proxies(["0.0.0.0/0".parse().unwrap()]),
    )));
    let huge = "a".repeat(1 << 20);
    let xff = "203.0.113.7, ".repeat(80_000);
    let res = send(
        &app,
        request(
            "10.0.0.1:1",
            &[("x-api-key", &huge), ("x-forwarded-for", &xff)],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_u64(&res, "x-ratelimit-limit"), 100);
}

#[tokio::test]
async fn closures_identify_too() {
    let by_user = |parts: &http::request::Parts| {
        parts
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(|u| limiter_http::Identity::new(Tier::ApiKey, format!("user:{u}")))
            .ok_or_else(|| limiter_http::Rejection::new(StatusCode::UNAUTHORIZED, "log in first"))
    };
    let app = app(layer(Counted::new()).identify(by_user));
    let res = send(&app, request("198.51.100.1:1", &[("x-user", "ann")])).await;
    assert_eq!(header_u64(&res, "x-ratelimit-limit"), 1000);
    let res = send(&app, request("198.51.100.1:1", &[])).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
