//! `ratelimitd` on a real Redis Cluster (redis-server processes started by
//! scripts/redis-topology.sh): with one master killed, only its clients are decided in
//! memory, and health and metrics say how much of the keyspace that is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use limiter_test_support::topology;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_degrades_only_its_share_of_the_keyspace() {
    let nodes = topology::Topology::cluster(17500);
    // A long probe interval keeps the slots open while the test looks at them.
    let file = config_file("[fallback]\nprobe_interval_ms = 60000\n");
    let args = [
        "--config",
        path(&file),
        "--redis-url",
        &nodes.url,
        "--hash-secret",
        SECRET,
        "--admin-token",
        ADMIN_TOKEN,
    ];
    let server = Server::start(&args);
    let http = client();
    let mut health = ready(&http, &server).await;
    for _ in 0..100 {
        if health["status"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        health = ready(&http, &server).await;
    }
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["components"]["redis"]["degraded_keyspace"], 0.0);

    // Live rules on the cluster: written through one worker, applied by another within a
    // second by its version check (a cluster gets no change notification), and enforced.
    let other = Server::start(&args);
    ready(&http, &other).await;
    let (status, _, body) = admin(
        &http,
        &server,
        reqwest::Method::POST,
        "/v1/admin/rules",
        Some(json!({"name": "login", "scope": "global", "resource": "login", "quotas": [{"limit": 2, "period": "1h"}]})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let written = Instant::now();
    let login = json!({"client": unique("cluster-login"), "resource": "login"});
    loop {
        let (_, answer) = check(
            &http,
            &other,
            json!({"client": "probe", "resource": "login", "dry_run": true}),
        )
        .await;
        if answer["rule"] == "login" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "not applied within a second: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut admitted = 0;
    for w in [&server, &other, &server, &other] {
        let (_, answer) = check(&http, w, login.clone()).await;
        assert_eq!(answer["backend"], "redis", "{answer}");
        admitted += usize::from(answer["allowed"] == true);
    }
    assert_eq!(admitted, 2);
    drop(other);

    // The dead master's replica must not take over while the test looks: its slots stay
    // unreachable.
    for port in &nodes.ports[3..] {
        nodes.cli(
            *port,
            &["config", "set", "cluster-replica-no-failover", "yes"],
        );
    }
    nodes.kill(nodes.ports[0]);
    // Clients everywhere: those of the dead master's slots go to memory, the rest stay.
    let clients: Vec<String> = (0..200).map(|i| unique(&format!("cluster-{i}"))).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut on_redis, mut on_memory) = (0, 0);
    for client in &clients {
        let (status, d) = check(&http, &server, json!({ "client": client })).await;
        assert_eq!(status, 200, "{d}");
        match (d["backend"].as_str(), d["degraded"].as_bool()) {
            (Some("redis"), Some(false)) => on_redis += 1,
            (Some("memory"), Some(true)) => on_memory += 1,
            other => panic!("unexpected answer {other:?}: {d}"),
        }
        assert!(
            Instant::now() < deadline,
            "checks are slow: {on_redis} on Redis so far"
        );
    }
    // About a third of the slots were the dead master's.
    assert!(
        (30..=110).contains(&on_memory),
        "{on_memory} of 200 on memory"
    );
    assert!(on_redis >= 90, "{on_redis} of 200 stayed on Redis");

    let health = ready(&http, &server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["components"]["redis"]["status"], "partial",
        "{health}"
    );
    let share = health["components"]["redis"]["degraded_keyspace"]
        .as_f64()
        .unwrap();
    // The dead master's slots, all of them (a third), not only those a check touched.
    assert!((0.3..0.34).contains(&share), "{health}");
    let metrics = metrics(&http, &server).await;
    assert!(
        metrics.contains(r#"ratelimit_fallback_state{state="partial"} 1"#),
        "{metrics}"
    );
    let ratio = gauge(&metrics, "ratelimit_fallback_degraded_keyspace_ratio");
    assert!(
        (ratio - share).abs() < 0.01,
        "metric {ratio}, health {share}"
    );
}
