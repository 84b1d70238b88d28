//! Every quota a user can write loads, and so does every fleet share of it: for random
//! limits and bursts from 1 to 10^9, periods from 1 ms to 7 days and 1 to 64 expected
//! workers, the configuration loads, and with Redis unreachable a check is answered from
//! memory on the worker's share: a decision, never an error.
//!
//! (Issue 13's first report: `limit = 2000000, period = "1h"` with `expected_workers = 3`
//! loaded, then answered every premium check during an outage with a 400 blaming the caller
//! for the server's own share. `limit = 20011, period = "1d"` did not load at all.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt;
use limiter_server::{App, Cli, Config};
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

const WEEK_MS: u64 = 7 * 86_400 * 1_000;
const BILLION: u64 = 1_000_000_000;

/// A period as a config file writes it: whole milliseconds, or microseconds.
fn period() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u64..=WEEK_MS).prop_map(|ms| format!("{ms}ms")),
        (1_000u64..=WEEK_MS * 1_000).prop_map(|us| format!("{us}us")),
        prop::sample::select(vec!["1s", "1m", "1h", "1d", "7d"]).prop_map(str::to_owned),
    ]
}

fn quota() -> impl Strategy<Value = (u64, String, Option<u64>)> {
    (
        prop_oneof![1u64..=BILLION, 1u64..=1_000],
        period(),
        proptest::option::of(prop_oneof![1u64..=BILLION, 1u64..=1_000]),
    )
}

async fn post(app: &App, body: Value) -> (StatusCode, Value) {
    let request = Request::post("/v1/check")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.router().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn every_quota_and_every_share_answers_in_an_outage() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let strategy = (proptest::collection::vec(quota(), 1..=3), 1u32..=64);
    let mut runner = TestRunner::new(Cases::with_cases(96));
    let result = runner.run(&strategy, |(quotas, workers)| {
        let list: Vec<String> = quotas
            .iter()
            .map(|(limit, period, burst)| match burst {
                Some(b) => format!("{{ limit = {limit}, period = \"{period}\", burst = {b} }}"),
                None => format!("{{ limit = {limit}, period = \"{period}\" }}"),
            })
            .collect();
        let file = dir.path().join("ratelimitd.toml");
        std::fs::write(
            &file,
            format!(
                "[tiers.premium]\nquotas = [{}]\n[fallback]\nexpected_workers = {workers}\n",
                list.join(", ")
            ),
        )
        .unwrap();
        // Redis is a closed port: every connection is refused at once.
        let cli = Cli::parse_from([
            "ratelimitd",
            "--config",
            file.to_str().unwrap(),
            "--redis-url",
            "redis://127.0.0.1:1",
            "--hash-secret",
            "quota property test secret",
        ]);
        let config = Config::load(&cli).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let smallest_burst = quotas
            .iter()
            .map(|(limit, _, burst)| burst.unwrap_or(*limit))
            .min()
            .unwrap();
        runtime.block_on(async {
            let app = App::new(&config).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            app.start().await;
            for cost in [1, smallest_burst] {
                let (status, d) = post(
                    &app,
                    json!({ "client": "c", "tier": "premium", "cost": cost }),
                )
                .await;
                prop_assert_eq!(status, StatusCode::OK, "cost {}: {}", cost, d);
                prop_assert_eq!(&d["backend"], "memory", "{}", d);
                prop_assert_eq!(&d["degraded"], true, "{}", d);
                prop_assert!(d["allowed"].is_boolean(), "{}", d);
            }
            Ok(())
        })
    });
    result.unwrap();
}
