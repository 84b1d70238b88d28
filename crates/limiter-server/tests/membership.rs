//! Fleet membership: each worker's heartbeat in Redis, the live workers listed, and the
//! fleet's size dividing its limits while Redis is away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// Workers on `redis_url` with the tests' admin token, a heartbeat TTL of `ttl_ms` and
/// the anonymous tier at `limit` an hour.
fn workers(
    redis_url: &str,
    n: usize,
    limit: u64,
    ttl_ms: u64,
) -> (tempfile::NamedTempFile, Vec<Server>) {
    let file = config_file(&format!(
        "[tiers.anonymous]\nquotas = [{{ limit = {limit}, period = \"1h\" }}]\n\
         [admin]\nheartbeat_ttl_ms = {ttl_ms}\n"
    ));
    let servers = (0..n)
        .map(|i| {
            let mut cmd = command();
            cmd.env("RATELIMIT_WORKER_NAME", format!("worker-{i}"));
            Server::start_with(
                cmd,
                &[
                    "--config",
                    path(&file),
                    "--redis-url",
                    redis_url,
                    "--hash-secret",
                    SECRET,
                    "--admin-token",
                    ADMIN_TOKEN,
                ],
            )
        })
        .collect();
    (file, servers)
}

async fn listed(http: &reqwest::Client, server: &Server) -> Vec<Value> {
    let (status, _, body) = admin(http, server, Method::GET, "/v1/admin/workers", None, None).await;
    assert_eq!(status, 200, "{body}");
    body["workers"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_workers_are_listed_and_a_stopped_one_leaves_within_its_ttl() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 10).await;
    let (_file, mut fleet) = workers(&url, 3, 1000, 2000);
    let http = client();
    for w in &fleet {
        ready(&http, w).await;
    }
    until(
        "three workers listed",
        Duration::from_secs(10),
        async || listed(&http, &fleet[0]).await.len() == 3,
    )
    .await;
    let list = listed(&http, &fleet[1]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(list.len(), 3);
    for server in &fleet {
        let member = list
            .iter()
            .find(|m| m["address"] == server.addr.to_string())
            .unwrap_or_else(|| panic!("{} not listed: {list:?}", server.addr));
        // The contract's fields, and where each worker listens.
        for field in [
            "id",
            "address",
            "backend",
            "degraded_share",
            "throttling",
            "last_seen",
        ] {
            assert!(member.get(field).is_some(), "{field} missing: {member}");
        }
        assert_eq!(member["backend"], "redis", "{member}");
        assert_eq!(member["degraded_share"], 0.0);
        assert_eq!(member["throttling"], false);
        let seen = member["last_seen"].as_u64().unwrap();
        assert!(now.abs_diff(seen) < 5_000, "last seen {seen}, now {now}");
    }
    // Each worker knows the fleet's size.
    for w in &fleet {
        until(
            "the fleet's size seen",
            Duration::from_secs(5),
            async || ready(&http, w).await["components"]["fleet"]["workers"] == 3,
        )
        .await;
    }

    let stopped = fleet.pop().unwrap();
    let gone = stopped.addr.to_string();
    drop(stopped);
    let killed = Instant::now();
    until(
        "the stopped worker gone",
        Duration::from_secs(5),
        async || {
            let list = listed(&http, &fleet[0]).await;
            list.len() == 2 && !list.iter().any(|m| m["address"] == gone)
        },
    )
    .await;
    eprintln!(
        "a stopped worker left the list after {:?} (TTL 2 s)",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_fleet_of_five_admits_about_the_limit_not_five_times_it() {
    let redis = TestRedis::container_on_fixed_port().await;
    // expected_workers is 1 (the default): only membership knows there are five.
    // The default TTL: a beat late on a loaded machine must not drop a worker from the count.
    let (_file, fleet) = workers(&redis.url, 5, 20, 5000);
    let http = client();
    for w in &fleet {
        ready(&http, w).await;
        until("five workers seen", Duration::from_secs(10), async || {
            ready(&http, w).await["components"]["fleet"]["workers"] == 5
        })
        .await;
    }
    redis.container_handle().stop().await.unwrap();
    let mut admitted = 0;
    for i in 0..100 {
        let (status, body) = check(&http, &fleet[i % 5], json!({"client": "outage-client"})).await;
        assert_eq!(status, 200, "{body}");
        if body["allowed"] == true {
            assert_eq!(body["degraded"], true, "{body}");
            admitted += 1;
        }
    }
    // Each worker enforces ⌈20 / 5⌉ = 4: the fleet admits the limit, not 5 × 20.
    assert!(
        (16..=20).contains(&admitted),
        "{admitted} admitted for a limit of 20"
    );
}
