//! Live rules across three `ratelimitd` workers on one Redis: a change made through one
//! worker is enforced exactly by the others within a second, the kill switch holds under
//! load, violations and statistics are fleet-wide and hold no raw identity, a write during
//! an outage changes nothing, and a check still costs Redis one script call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use limiter_redis::redis;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// Three workers on `redis_url` with the admin API on. The deadline is long enough that
/// every decision is Redis's on a loaded two-core machine.
fn fleet(redis_url: &str, extra: &str) -> (tempfile::NamedTempFile, Vec<Server>) {
    let file = config_file(&format!("[fallback]\ndeadline_ms = 2000\n{extra}"));
    let workers = (0..3)
        .map(|_| {
            Server::start(&[
                "--config",
                path(&file),
                "--redis-url",
                redis_url,
                "--hash-secret",
                SECRET,
                "--admin-token",
                ADMIN_TOKEN,
            ])
        })
        .collect();
    (file, workers)
}

/// Polls `worker`'s explain call until `rule` decides `asked` (or, with `None`, none
/// does); the time since `started`.
async fn until_decided_since(
    started: Instant,
    http: &reqwest::Client,
    worker: &Server,
    asked: &Value,
    rule: Option<&str>,
) -> Duration {
    loop {
        let (_, _, explained) = admin(
            http,
            worker,
            Method::POST,
            "/v1/admin/explain",
            Some(asked.clone()),
            None,
        )
        .await;
        if explained["decided_by"].as_str() == rule {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "rule {rule:?} never applied: {explained}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until_decided(
    http: &reqwest::Client,
    worker: &Server,
    asked: &Value,
    rule: Option<&str>,
) -> Duration {
    until_decided_since(Instant::now(), http, worker, asked, rule).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_added_through_one_worker_is_enforced_exactly_by_the_others_within_a_second() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 11).await;
    let (_file, workers) = fleet(&url, "");
    let http = client();
    for w in &workers {
        ready(&http, w).await;
    }
    let asked = json!({"client": "203.0.113.77", "resource": "login"});
    let rule = json!({"name": "login-ip", "scope": "ip", "match": "203.0.113.0/24", "resource": "login", "quotas": [{"limit": 5, "period": "1d"}]});
    add_rule(&http, &workers[0], rule).await;
    let written = Instant::now();
    for w in &workers[1..] {
        let took = until_decided_since(written, &http, w, &asked, Some("login-ip")).await;
        assert!(
            took <= Duration::from_secs(1),
            "applied {took:?} after the write"
        );
    }
    // Exactly five between workers 2 and 3, in turn.
    let mut allowed = 0;
    for i in 0..12 {
        let (status, answer) = check(&http, &workers[1 + i % 2], asked.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["rule"], "login-ip", "{answer}");
        assert_eq!(answer["backend"], "redis");
        allowed += usize::from(answer["allowed"] == true);
    }
    assert_eq!(allowed, 5);

    let (status, _, _) = admin(
        &http,
        &workers[0],
        Method::DELETE,
        "/v1/admin/rules/login-ip",
        None,
        None,
    )
    .await;
    assert_eq!(status, 204);
    for w in &workers[1..] {
        let took = until_decided(&http, w, &asked, None).await;
        assert!(took <= Duration::from_secs(1), "removed after {took:?}");
        assert_eq!(check(&http, w, asked.clone()).await.1["allowed"], true);
    }
    // Every worker reports the rules it holds.
    for w in &workers {
        let health = ready(&http, w).await;
        assert_eq!(health["components"]["rules"]["status"], "ok", "{health}");
        assert_eq!(health["components"]["rules"]["store"], "redis");
        assert_eq!(health["components"]["rules"]["version"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_holds_across_the_fleet_under_load() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 12).await;
    let (_file, workers) = fleet(&url, "");
    let http = client();
    for w in &workers {
        ready(&http, w).await;
    }
    add_rule(
        &http,
        &workers[0],
        json!({"name": "tight", "scope": "global", "quotas": [{"limit": 3, "period": "1d"}]}),
    )
    .await;
    let asked = json!({"client": "kill-switch-load"});
    for w in &workers {
        until_decided(&http, w, &asked, Some("tight")).await;
    }
    let urls: Vec<String> = workers.iter().map(|w| w.url("/v1/check")).collect();
    // Load from 6 tasks over the three workers; returns (allowed, denied).
    let load = |rounds: usize| {
        let tasks: Vec<_> = (0..6)
            .map(|t| {
                let (http, urls, asked) = (http.clone(), urls.clone(), asked.clone());
                tokio::spawn(async move {
                    let mut counts = (0, 0);
                    for i in 0..rounds {
                        let res = http
                            .post(&urls[(t + i) % 3])
                            .json(&asked)
                            .send()
                            .await
                            .unwrap();
                        let answer: Value = res.json().await.unwrap();
                        if answer["allowed"] == true {
                            counts.0 += 1;
                        } else {
                            counts.1 += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        async move {
            let mut total = (0, 0);
            for task in tasks {
                let (a, d) = task.await.unwrap();
                total = (total.0 + a, total.1 + d);
            }
            total
        }
    };
    assert_eq!(load(10).await, (3, 57));

    let (status, _, _) = admin(
        &http,
        &workers[1],
        Method::POST,
        "/v1/admin/enforcement",
        Some(json!({"enforce": false})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    for w in &workers {
        let started = Instant::now();
        loop {
            let (_, _, state) =
                admin(&http, w, Method::GET, "/v1/admin/enforcement", None, None).await;
            if state["enforce"] == false {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "kill switch not applied in a second"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(load(20).await, (120, 0), "denied while enforcement was off");

    let (status, _, _) = admin(
        &http,
        &workers[2],
        Method::POST,
        "/v1/admin/enforcement",
        Some(json!({"enforce": true})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(load(5).await, (0, 30));
    // The would-be denials were counted fleet-wide: 120 while off.
    let started = Instant::now();
    loop {
        let (_, _, stats) = admin(
            &http,
            &workers[0],
            Method::GET,
            "/v1/admin/stats?window=1h&step=1h&rule=tight",
            None,
            None,
        )
        .await;
        if stats["totals"]["shadow_denied"] == 120 && stats["totals"]["checks"] == 210 {
            assert_eq!(stats["totals"]["denied"], 87, "{stats}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every string stored in the database: keys, and the values of strings, hashes and streams.
async fn everything_stored(url: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut all = String::new();
    for key in keys {
        all.push_str(&key);
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value: redis::Value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap(),
            _ => redis::Value::Nil,
        };
        all.push_str(&format!("{value:?}"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_and_stats_are_fleet_wide_bounded_and_hold_no_raw_identity() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 13).await;
    let (_file, workers) = fleet(&url, "[admin]\nviolations_max = 50\n");
    let http = client();
    for w in &workers {
        ready(&http, w).await;
    }
    let raw_key = "k-raw-api-key-never-stored-0001";
    let raw_ip = "198.51.100.23";
    add_rule(&http, &workers[0], json!({"name": "one-key", "scope": "api_key", "match": raw_key, "quotas": [{"limit": 1, "period": "1d"}]})).await;
    add_rule(&http, &workers[0], json!({"name": "one-ip", "scope": "ip", "match": "198.51.100.0/24", "quotas": [{"limit": 1, "period": "1d"}]})).await;
    for w in &workers {
        until_decided(&http, w, &json!({"client": raw_key}), Some("one-key")).await;
        until_decided(&http, w, &json!({"client": raw_ip}), Some("one-ip")).await;
    }
    // Denials on workers 2 and 3, then many more than the stream keeps.
    for client_id in [raw_key, raw_ip] {
        assert_eq!(
            check(&http, &workers[1], json!({"client": client_id}))
                .await
                .1["allowed"],
            true
        );
        assert_eq!(
            check(&http, &workers[2], json!({"client": client_id}))
                .await
                .1["allowed"],
            false
        );
        assert_eq!(
            check(&http, &workers[1], json!({"client": client_id}))
                .await
                .1["allowed"],
            false
        );
    }
    // Read through worker 1, which decided none of them.
    let started = Instant::now();
    let found = loop {
        let (_, _, found) = admin(
            &http,
            &workers[0],
            Method::GET,
            "/v1/admin/violations?since=1h",
            None,
            None,
        )
        .await;
        if found["violations"].as_array().unwrap().len() == 4 {
            break found;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let from: std::collections::BTreeSet<&str> = found["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["worker"].as_str().unwrap())
        .collect();
    assert_eq!(
        from.len(),
        2,
        "violations from both deciding workers: {found}"
    );
    let (_, _, by_rule) = admin(
        &http,
        &workers[0],
        Method::GET,
        "/v1/admin/violations?since=1h&rule=one-ip&limit=10",
        None,
        None,
    )
    .await;
    assert_eq!(
        by_rule["violations"].as_array().unwrap().len(),
        2,
        "{by_rule}"
    );

    for i in 0..150 {
        check(&http, &workers[i % 3], json!({"client": raw_ip})).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, _, stats) = admin(
        &http,
        &workers[2],
        Method::GET,
        "/v1/admin/stats?window=1h&step=1m",
        None,
        None,
    )
    .await;
    assert_eq!(stats["totals"]["denied"], 154, "{stats}");
    // The stream is capped near violations_max (XADD MAXLEN ~ trims by whole nodes).
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let kept: u64 = redis::cmd("XLEN")
        .arg("rl:{admin}:violations")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(kept <= 150, "{kept} violations kept");

    let stored = everything_stored(&url).await;
    let (_, _, rules) = admin(
        &http,
        &workers[0],
        Method::GET,
        "/v1/admin/rules",
        None,
        None,
    )
    .await;
    let answers = format!("{found}{stats}{rules}");
    let logs: String = workers.iter().map(Server::logs).collect();
    for raw in [raw_key, raw_ip] {
        assert!(!stored.contains(raw), "{raw} stored in Redis");
        assert!(!answers.contains(raw), "{raw} in an answer");
        assert!(!logs.contains(raw), "{raw} logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_a_redis_outage_changes_nothing_and_workers_keep_their_rules() {
    let redis = TestRedis::container_on_fixed_port().await;
    let (_file, workers) = fleet(&redis.url, "");
    let http = client();
    let worker = &workers[0];
    ready(&http, worker).await;
    add_rule(&http, worker, json!({"name": "kept", "scope": "global", "resource": "login", "quotas": [{"limit": 2, "period": "1d"}]})).await;
    let (_, _, before) = admin(&http, worker, Method::GET, "/v1/admin/rules", None, None).await;

    redis.container_handle().stop().await.unwrap();
    let (status, headers, body) = admin(
        &http,
        worker,
        Method::POST,
        "/v1/admin/rules",
        Some(json!({"name": "new", "scope": "global", "quotas": [{"limit": 1, "period": "1m"}]})),
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    // The rules in force stay, and readiness says they may be stale.
    let started = Instant::now();
    loop {
        let health = ready(&http, &workers[1]).await;
        if health["components"]["rules"]["status"] == "stale" {
            assert_eq!(health["status"], "degraded");
            assert_eq!(health["components"]["rules"]["version"], 1);
            let text = metrics(&http, &workers[1]).await;
            assert!(text.contains("ratelimit_rules_stale 1"), "{text}");
            assert!(text.contains("ratelimit_rules_version 1"), "{text}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, explained) = admin(
        &http,
        &workers[1],
        Method::POST,
        "/v1/admin/explain",
        Some(json!({"client": "c", "resource": "login"})),
        None,
    )
    .await;
    assert_eq!(explained["decided_by"], "kept");

    redis.container_handle().start().await.unwrap();
    // The restarted Redis has no data: a worker puts back the rules it holds, and only
    // those (the refused write is not among them).
    let started = Instant::now();
    loop {
        let (status, _, audit) =
            admin(&http, worker, Method::GET, "/v1/admin/audit", None, None).await;
        if status == 200 && audit["changes"][0]["action"] == "restore" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rules never restored: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, _, after) = admin(&http, worker, Method::GET, "/v1/admin/rules", None, None).await;
    assert_eq!(after, before, "the failed write changed the rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_lost_by_redis_are_restored_not_replaced_by_a_new_workers_seeds() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 15).await;
    let (_file, workers) = fleet(&url, "");
    let http = client();
    ready(&http, &workers[0]).await;
    for name in ["a", "b"] {
        add_rule(&http, &workers[0], json!({"name": name, "scope": "global", "resource": name, "quotas": [{"limit": 3, "period": "1h"}]})).await;
    }
    for w in &workers {
        until_decided(
            &http,
            w,
            &json!({"client": "c", "resource": "b"}),
            Some("b"),
        )
        .await;
    }
    // Redis loses everything; a new worker starts with seeds of its own meanwhile.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    let seeds = config_file(
        "[fallback]\ndeadline_ms = 2000\n[[rules]]\nname = \"seeded\"\nscope = \"global\"\nquotas = [{ limit = 1, period = \"1h\" }]\n",
    );
    let newcomer = Server::start(&[
        "--config",
        path(&seeds),
        "--redis-url",
        &url,
        "--hash-secret",
        SECRET,
        "--admin-token",
        ADMIN_TOKEN,
    ]);
    // Every worker, the newcomer too, ends with the rules the fleet held.
    for w in workers.iter().chain([&newcomer]) {
        until_decided(
            &http,
            w,
            &json!({"client": "c", "resource": "a"}),
            Some("a"),
        )
        .await;
        let (_, _, doc) = admin(&http, w, Method::GET, "/v1/admin/rules", None, None).await;
        assert_eq!(doc["version"], 2, "{doc}");
    }
    // And Redis holds them again.
    let started = Instant::now();
    loop {
        let stored: Option<String> = redis::cmd("HGET")
            .arg("rl:{admin}:rules")
            .arg("doc")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(doc) = stored {
            let doc: Value = serde_json::from_str(&doc).unwrap();
            assert_eq!(
                (
                    doc["version"].as_u64(),
                    doc["rules"].as_array().unwrap().len()
                ),
                (Some(2), 2),
                "{doc}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never restored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_under_rules_with_stats_on_is_still_one_script_call() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 14).await;
    let file = config_file("[fallback]\ndeadline_ms = 2000\n");
    let worker = Server::start(&[
        "--config",
        path(&file),
        "--redis-url",
        &url,
        "--hash-secret",
        SECRET,
        "--admin-token",
        ADMIN_TOKEN,
    ]);
    let http = client();
    ready(&http, &worker).await;
    add_rule(&http, &worker, json!({"name": "per-ip", "scope": "ip", "match": "10.0.0.0/8", "quotas": [{"limit": 1000, "period": "1m"}]})).await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let calls = |info: &str, command: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..300 {
        let (status, answer) = check(
            &http,
            &worker,
            json!({"client": format!("10.0.{}.{}", i / 200, i % 200)}),
        )
        .await;
        assert_eq!((status, answer["rule"].as_str()), (200, Some("per-ip")));
    }
    let seconds = started.elapsed().as_secs() + 2;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let scripts = calls(&info, "evalsha") + calls(&info, "eval");
    assert_eq!(scripts, 300, "{info}");
    // Besides: a version check twice a second and one flush pipeline a second (its
    // increments and expiries), whatever the number of checks.
    let flushes = calls(&info, "hincrby") + calls(&info, "expire");
    assert!(
        flushes <= seconds * 8,
        "{flushes} stats writes in {seconds} s: {info}"
    );
    assert!(calls(&info, "hget") <= seconds * 3, "{info}");
}
