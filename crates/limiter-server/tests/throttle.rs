//! Load-aware throttling with a real load: the worker's own CPU sample crosses the
//! threshold, the anonymous tier keeps half its limit (exactly), and the worker relaxes
//! once the load is gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

async fn throttle_state(http: &reqwest::Client, server: &Server) -> serde_json::Value {
    let res = http.get(server.url("/health/ready")).send().await.unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    body["components"]["throttle"].clone()
}

/// Readiness's throttle state once its `active` is `active`, failing as `what` after
/// `within`.
async fn until_throttling(
    http: &reqwest::Client,
    server: &Server,
    active: bool,
    within: Duration,
    what: &str,
) -> serde_json::Value {
    let mut state = serde_json::Value::Null;
    until(what, within, async || {
        state = throttle_state(http, server).await;
        state["active"] == active
    })
    .await;
    state
}

/// `n` checks for a fresh client: how many were allowed, and the last answer.
async fn admitted(
    http: &reqwest::Client,
    server: &Server,
    client: &str,
    n: usize,
) -> (usize, serde_json::Value) {
    let mut allowed = 0;
    let mut last = serde_json::Value::Null;
    for _ in 0..n {
        let (status, body) = check(http, server, json!({ "client": client })).await;
        assert_eq!(status, 200, "{body}");
        allowed += usize::from(body["allowed"] == true);
        last = body;
    }
    (allowed, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_under_real_load_tightens_the_anonymous_tier_then_relaxes() {
    let file = config_file(
        "[tiers.anonymous]\nquotas = [{ limit = 10, period = \"1h\" }]\n\
         [throttle]\nenabled = true\ncpu_percent = 15\nrelax_cpu_percent = 5\n\
         hold_ms = 1000\nrelax_ms = 2000\nsample_ms = 250\n\
         keep_percent = { anonymous = 50 }\n",
    );
    let server = Server::start(&["--config", path(&file)]);
    let http = client();
    ready(&http, &server).await;
    assert_eq!(throttle_state(&http, &server).await["active"], false);

    // Quiet: the whole limit.
    assert_eq!(admitted(&http, &server, "quiet-1", 12).await.0, 10);

    // A real load on the worker's CPU: checks from many clients as fast as it answers.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|t| {
            let (http, url, stop) = (http.clone(), server.url("/v1/check"), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = http
                        .post(&url)
                        .json(&json!({ "client": format!("load-{t}-{i}") }))
                        .send()
                        .await;
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let state = until_throttling(
        &http,
        &server,
        true,
        Duration::from_secs(30),
        "never throttled",
    )
    .await;
    eprintln!("throttling on after {:?}: {state}", started.elapsed());
    // Exactly half the limit while throttling, and the denials say why.
    let (allowed, last) = admitted(&http, &server, "busy-1", 8).await;
    assert_eq!(allowed, 5, "{last}");
    assert_eq!(last["allowed"], false);
    assert_eq!(last["reason"], "throttled", "{last}");
    // The guarded routes say so too, in their 429.
    let mut statuses = Vec::new();
    let mut refusal = serde_json::Value::Null;
    for _ in 0..7 {
        let res = http.get(server.url("/v1/whoami")).send().await.unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            refusal = res.json().await.unwrap();
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "{refusal}");
    assert_eq!(refusal["reason"], "throttled", "{refusal}");
    // The tier's own bucket was not touched by the throttled denials: 5 taken, 5 left.
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }

    let stopped = Instant::now();
    until_throttling(
        &http,
        &server,
        false,
        Duration::from_secs(30),
        "never relaxed",
    )
    .await;
    eprintln!(
        "throttling off {:?} after the load stopped",
        stopped.elapsed()
    );
    assert_eq!(
        admitted(&http, &server, "quiet-2", 12).await.0,
        10,
        "the whole limit again"
    );
    let (more, _) = admitted(&http, &server, "busy-1", 10).await;
    assert_eq!(
        more, 5,
        "the throttled client's own bucket kept its 5 tokens"
    );

    let text = metrics(&http, &server).await;
    for line in [
        r#"ratelimit_throttle_transitions_total{to="on"} 1"#,
        r#"ratelimit_throttle_transitions_total{to="off"} 1"#,
        "ratelimit_throttle_active 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[test]
fn throttle_settings_are_checked_by_name() {
    for (toml, expected) in [
        (
            "[throttle]\ncpu_percent = 50\nrelax_cpu_percent = 70\n",
            "throttle.relax_cpu_percent: must not be above cpu_percent",
        ),
        (
            "[throttle]\nkeep_percent = { anonymous = 100 }\n",
            "throttle.keep_percent.anonymous: must be 1 to 99",
        ),
        (
            "[throttle]\nsample_ms = 10\n",
            "throttle.sample_ms: must be 100 to 3,600,000",
        ),
    ] {
        let file = config_file(toml);
        let (code, _, stderr) = run(command(), &["--config", path(&file), "config"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "{expected} not in {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_answers_turn_throttling_on_and_fast_ones_off() {
    let redis = TestRedis::container().await;
    let file = config_file(
        "[fallback]\ndeadline_ms = 2000\n\
         [throttle]\nenabled = true\ncpu_percent = 100\nrelax_cpu_percent = 100\n\
         memory_percent = 100\nrelax_memory_percent = 100\n\
         redis_p99_ms = 30\nrelax_redis_p99_ms = 20\n\
         hold_ms = 1000\nrelax_ms = 2000\nsample_ms = 250\n",
    );
    let server = Server::start(&[
        "--config",
        path(&file),
        "--redis-url",
        &redis.url,
        "--hash-secret",
        SECRET,
    ]);
    let http = client();
    ready(&http, &server).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|t| {
            let (http, url, stop) = (http.clone(), server.url("/v1/check"), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = http
                        .post(&url)
                        .json(&json!({ "client": format!("c-{t}-{i}") }))
                        .send()
                        .await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    // Redis busy 60 ms at a time (a script spinning on its clock): the checks queue behind.
    let busy = Arc::new(AtomicBool::new(true));
    let blocker = {
        let (busy, mut conn) = (busy.clone(), redis.raw().await);
        tokio::spawn(async move {
            let spin = "local t = redis.call('TIME'); local start = t[1] * 1000000 + t[2]; \
                        repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 60000; return 1";
            while busy.load(Ordering::Relaxed) {
                let _: i64 = limiter_redis::redis::cmd("EVAL")
                    .arg(spin)
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    let state = until_throttling(
        &http,
        &server,
        true,
        Duration::from_secs(20),
        "never throttled",
    )
    .await;
    eprintln!("throttling on after {:?}: {state}", started.elapsed());
    assert!(state["redis_p99_ms"].as_f64().unwrap() > 30.0, "{state}");
    busy.store(false, Ordering::Relaxed);
    blocker.await.unwrap();
    let quick = Instant::now();
    let state = until_throttling(
        &http,
        &server,
        false,
        Duration::from_secs(20),
        "never relaxed",
    )
    .await;
    eprintln!(
        "throttling off {:?} after Redis was quick again: {state}",
        quick.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
}
