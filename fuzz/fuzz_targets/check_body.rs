//! `POST /v1/check` with any body: `ratelimitd` (its in-memory default) answers a decision
//! (200, admitted or not) or a problem (400, 413, 422) that states its status, always as
//! JSON; never a panic, never a 5xx.

#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use limiter_server::{App, Config};
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let app = App::new(&Config::default()).expect("the default config builds");
        Fixture {
            runtime,
            router: app.router(),
        }
    })
}

fuzz_target!(|body: &[u8]| {
    let f = fixture();
    let request = Request::post("/v1/check")
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a valid request");
    let (status, bytes) = f.runtime.block_on(async {
        let response = f.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, bytes)
    });
    assert!(
        matches!(status.as_u16(), 200 | 400 | 413 | 422),
        "{status} for {:?}",
        String::from_utf8_lossy(body)
    );
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
    if status.as_u16() == 200 {
        assert!(json["allowed"].is_boolean(), "{json}");
    } else {
        assert_eq!(
            json["status"].as_u64(),
            Some(u64::from(status.as_u16())),
            "{json}"
        );
    }
});
