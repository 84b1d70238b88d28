//! Three `ratelimitd` workers on one Redis enforce one limit between them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::ops::ControlFlow;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// A limit that refills one token a day: whatever the test's pace, the count is exact.
const LIMIT: usize = 300;

/// Three debug builds, Redis and the load share two cores: a check slower than the default
/// 50 ms deadline would be decided by a worker's own memory, and the count would no longer be
/// one shared limit. The deadline here is long enough that every decision is Redis's.
fn fleet(redis: &TestRedis, key: &str) -> (tempfile::NamedTempFile, Vec<Server>) {
    let file = config_file(&format!(
        "[tiers.api_key]\nquotas = [{{ limit = {LIMIT}, period = \"1d\" }}]\n\
         [fallback]\ndeadline_ms = 2000\n\
         [[api_keys]]\nname = \"fleet\"\nsha256 = \"{}\"\ntier = \"api_key\"\n",
        limiter_http::ApiKeys::hash_key(key)
    ));
    let args = [
        "--config",
        path(&file),
        "--redis-url",
        &redis.url,
        "--hash-secret",
        SECRET,
    ];
    let workers = (0..3).map(|_| Server::start(&args)).collect();
    (file, workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_key_over_three_workers_is_admitted_exactly_up_to_the_limit() {
    let redis = TestRedis::start().await;
    let key = unique("fleet-key");
    let (_file, workers) = fleet(&redis, &key);
    let http = client();
    for w in &workers {
        let health = ready(&http, w).await;
        assert_eq!(health["status"], "ok", "{health}");
        assert_eq!(health["components"]["redis"]["status"], "ok");
    }

    // 12 tasks, 40 requests each, every request to the next worker in turn.
    let urls: Vec<String> = workers.iter().map(|w| w.url("/v1/whoami")).collect();
    let mut tasks = Vec::new();
    for t in 0..12 {
        let (http, urls, key) = (http.clone(), urls.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut allowed = [0usize; 3];
            let mut denied = 0;
            for i in 0..40 {
                let w = (t + i) % 3;
                let res = http
                    .get(&urls[w])
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                match res.status().as_u16() {
                    200 => {
                        assert_eq!(
                            res.headers()["x-ratelimit-limit"],
                            LIMIT.to_string().as_str()
                        );
                        let who: Value = res.json().await.unwrap();
                        assert_eq!(who["backend"], "redis");
                        allowed[w] += 1;
                    }
                    429 => denied += 1,
                    other => panic!("worker {w} answered {other}"),
                }
            }
            (allowed, denied)
        }));
    }
    let (mut allowed, mut denied) = ([0usize; 3], 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        for w in 0..3 {
            allowed[w] += a[w];
        }
        denied += d;
    }
    let total: usize = allowed.iter().sum();
    assert_eq!(total, LIMIT, "admitted {allowed:?} per worker");
    assert_eq!(denied, 480 - LIMIT);
    assert!(
        allowed.iter().all(|&n| n > 0),
        "some worker admitted nothing: {allowed:?}"
    );

    // The check API shares the same buckets across workers.
    let client_id = unique("fleet-client");
    let mut admitted = 0;
    for i in 0..(LIMIT + 60) {
        let body = json!({ "client": client_id, "tier": "api_key" });
        let (status, d) = check(&http, &workers[i % 3], body).await;
        assert_eq!(status, 200);
        assert_eq!(d["backend"], "redis");
        admitted += usize::from(d["allowed"] == true);
    }
    assert_eq!(admitted, LIMIT);
}

#[tokio::test]
async fn without_redis_the_workers_answer_from_memory_and_say_degraded() {
    // Nothing listens on port 1: connections are refused at once.
    let server = Server::start(&[
        "--redis-url",
        "redis://127.0.0.1:1",
        "--hash-secret",
        SECRET,
    ]);
    let http = client();
    let health = ready(&http, &server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["components"]["redis"]["status"], "unavailable");
    assert_eq!(health["components"]["memory"]["active"], true);

    // The memory fallback still limits: 100 a minute, a token every 600 ms.
    until_denied(100, Duration::from_millis(600), || async {
        let res = http.get(server.url("/v1/whoami")).send().await.unwrap();
        match res.status().as_u16() {
            200 => {
                let who: Value = res.json().await.unwrap();
                assert_eq!(who["backend"], "memory");
                ControlFlow::Continue(())
            }
            429 => ControlFlow::Break(()),
            other => panic!("answered {other}"),
        }
    })
    .await;
    let (status, d) = check(&http, &server, json!({ "client": "c" })).await;
    assert_eq!((status, d["degraded"].clone()), (200, json!(true)));

    let metrics = metrics(&http, &server).await;
    assert!(metrics.contains("ratelimit_fallback_active 1"), "{metrics}");
    assert!(
        metrics.contains(r#"ratelimit_fallback_state{state="closed"} 0"#),
        "{metrics}"
    );
    let unavailable = metrics
        .lines()
        .find(|l| l.starts_with(r#"ratelimit_redis_errors_total{kind="unavailable"}"#))
        .unwrap_or_else(|| panic!("no Redis error count: {metrics}"));
    assert!(!unavailable.ends_with(" 0"), "{unavailable}");
}

#[tokio::test]
async fn sigterm_drains_then_stops() {
    let server = Server::start_with(
        {
            let mut cmd = command();
            cmd.env("RATELIMIT_SHUTDOWN_GRACE_MS", "1500");
            cmd
        },
        &[],
    );
    let http = client();
    assert_eq!(
        http.get(server.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    ready(&http, &server).await;
    let startup = http
        .get(server.url("/health/startup"))
        .send()
        .await
        .unwrap();
    assert_eq!(startup.status(), 200);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // During the grace period readiness says so, and requests are still served.
    let mut draining = false;
    for _ in 0..100 {
        let res = http.get(server.url("/health/ready")).send().await.unwrap();
        if res.status() == 503 {
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["status"], "draining");
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "readiness never said draining");
    assert_eq!(
        http.get(server.url("/v1/whoami"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let logs = server.logs.clone();
    let exit = server.wait(Duration::from_secs(10));
    assert!(exit.success(), "exit {exit:?}");
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("shutting down") && logs.contains("stopped"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_client_costs_redis_one_call_per_retry_after_per_worker() {
    // Its own Redis: the test counts every EVALSHA.
    let redis = TestRedis::container().await;
    let key = unique("abuser");
    let (_file, workers) = fleet(&redis, &key);
    let http = client();
    for w in &workers {
        ready(&http, w).await;
    }
    // Use up the day's quota (one token refills every 288 s).
    let mut admitted = 0;
    while admitted < LIMIT {
        let res = http
            .get(workers[admitted % 3].url("/v1/whoami"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        admitted += 1;
    }
    let before = redis.calls("evalsha").await;
    for i in 0..600 {
        let res = http
            .get(workers[i % 3].url("/v1/whoami"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((250..=288).contains(&wait), "Retry-After {wait}");
    }
    let calls = redis.calls("evalsha").await - before;
    assert!(
        calls <= 3,
        "600 denied requests cost Redis {calls} checks (at most 1 per worker)"
    );
}
