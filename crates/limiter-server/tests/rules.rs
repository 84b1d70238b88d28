//! Live rules on one `ratelimitd` without Redis: the admin API, its refusals, precedence
//! with the explain call, shadow rules, the kill switch, peek and refund, and rules that
//! survive a restart in the rules file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// A worker with the admin API on, its rules in `rules_file`, and `extra` config.
fn worker(rules_file: &std::path::Path, extra: &str) -> (tempfile::NamedTempFile, Server) {
    let file = config_file(extra);
    let server = Server::start(&[
        "--config",
        path(&file),
        "--admin-token",
        ADMIN_TOKEN,
        "--rules-file",
        rules_file.to_str().unwrap(),
    ]);
    (file, server)
}

fn rules_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_token() {
    let server = Server::start(&[]);
    let http = client();
    let res = http
        .get(server.url("/v1/admin/rules"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn tokens_are_checked_and_failed_attempts_limited_per_peer() {
    let dir = rules_dir();
    let (_file, server) = worker(
        &dir.path().join("rules.json"),
        "[admin]\nfailed_attempts_per_minute = 3\n",
    );
    let http = client();
    let url = server.url("/v1/admin/rules");

    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let body: Value = missing.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("missing token"),
        "{body}"
    );

    // The right token passes (and does not count as a failure).
    let (status, _, _) = admin(&http, &server, Method::GET, "/v1/admin/rules", None, None).await;
    assert_eq!(status, 200);

    let wrong = "wrong-token-that-is-long-enough";
    for _ in 0..2 {
        let res = http.get(&url).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    // Three failures per minute: the next is refused as too many, and so is the right
    // token from this peer until the minute has passed.
    let res = http.get(&url).bearer_auth(wrong).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let (status, _, _) = admin(&http, &server, Method::GET, "/v1/admin/rules", None, None).await;
    assert_eq!(status, 429);

    // No token, right or wrong, is ever logged.
    let logs = server.logs();
    assert!(
        !logs.contains(ADMIN_TOKEN) && !logs.contains(wrong),
        "{logs}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_by_field_and_changes_nothing() {
    let dir = rules_dir();
    let (_file, server) = worker(&dir.path().join("rules.json"), "");
    let http = client();
    let q = json!([{ "limit": 5, "period": "1m" }]);
    let cases = [
        (
            json!({"name": "a", "scope": "galaxy", "quotas": q}),
            "scope",
        ),
        (
            json!({"name": "a", "scope": "ip", "match": "203.0.113.0/33", "quotas": q}),
            "match",
        ),
        (
            json!({"name": "a", "scope": "ip", "match": "300.1.2.3/8", "quotas": q}),
            "match",
        ),
        (
            json!({"name": "a", "scope": "tier", "match": "gold", "quotas": q}),
            "match",
        ),
        (
            json!({"name": "a", "scope": "global", "quotas": [{"limit": 0, "period": "1m"}]}),
            "quotas[0]",
        ),
        (
            json!({"name": "a", "scope": "global", "quotas": []}),
            "quotas",
        ),
        (
            json!({"name": "a", "scope": "global", "rollout_percent": 101, "quotas": q}),
            "rollout_percent",
        ),
        (
            json!({"name": "a", "scope": "global", "mode": "sometimes", "quotas": q}),
            "mode",
        ),
        (
            json!({"name": "bad name", "scope": "global", "quotas": q}),
            "name",
        ),
        (
            json!({"name": "export", "scope": "global", "quotas": q}),
            "name",
        ),
    ];
    for (rule, field) in cases {
        let (status, headers, body) = admin(
            &http,
            &server,
            Method::POST,
            "/v1/admin/rules",
            Some(rule.clone()),
            None,
        )
        .await;
        assert_eq!(status, 400, "{rule}: {body}");
        assert_eq!(body["field"], field, "{rule}: {body}");
        assert_eq!(headers["content-type"], "application/problem+json");
    }
    // Malformed JSON.
    let res = http
        .post(server.url("/v1/admin/rules"))
        .bearer_auth(ADMIN_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // Unknown rules: 404 for every verb.
    for method in [Method::GET, Method::PUT, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PUT || method == Method::PATCH)
            .then(|| json!({"scope": "global", "quotas": q}));
        let (status, _, answer) = admin(
            &http,
            &server,
            method.clone(),
            "/v1/admin/rules/nobody",
            body,
            None,
        )
        .await;
        assert_eq!(status, 404, "{method}: {answer}");
    }

    // A duplicate: 409; then delete: 204, and it is gone.
    let rule = json!({"name": "dup", "scope": "global", "quotas": q});
    add_rule(&http, &server, rule.clone()).await;
    let (status, _, _) = admin(
        &http,
        &server,
        Method::POST,
        "/v1/admin/rules",
        Some(rule),
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _, _) = admin(
        &http,
        &server,
        Method::DELETE,
        "/v1/admin/rules/dup",
        None,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, headers, doc) = admin(&http, &server, Method::GET, "/v1/admin/rules", None, None).await;
    assert_eq!(doc["rules"], json!([]), "{doc}");
    // Two writes: the version and the ETag say so.
    assert_eq!(doc["version"], 2);
    assert_eq!(headers["etag"], "\"2\"");

    // A bad import changes nothing.
    let (status, _, body) = admin(
        &http,
        &server,
        Method::PUT,
        "/v1/admin/rules/import",
        Some(json!({"rules": [{"name": "ok", "scope": "global", "quotas": q}, {"name": "no", "scope": "ip", "match": "x", "quotas": q}]})),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "rules[1].match", "{body}");
    let (_, _, doc) = admin(&http, &server, Method::GET, "/v1/admin/rules", None, None).await;
    assert_eq!(
        (
            doc["version"].as_u64(),
            doc["rules"].as_array().unwrap().len()
        ),
        (Some(2), 0)
    );
}

#[tokio::test]
async fn concurrent_writers_with_one_etag_get_412() {
    let dir = rules_dir();
    let (_file, server) = worker(&dir.path().join("rules.json"), "");
    let http = client();
    add_rule(
        &http,
        &server,
        json!({"name": "r", "scope": "global", "quotas": [{"limit": 5, "period": "1m"}]}),
    )
    .await;
    let (_, headers, _) = admin(&http, &server, Method::GET, "/v1/admin/rules/r", None, None).await;
    let tag = headers["etag"].to_str().unwrap().to_owned();

    let put = |limit: u64| {
        let (http, tag) = (http.clone(), tag.clone());
        let server = &server;
        async move {
            admin(
                &http,
                server,
                Method::PUT,
                "/v1/admin/rules/r",
                Some(json!({"scope": "global", "quotas": [{"limit": limit, "period": "1m"}]})),
                Some(&tag),
            )
            .await
            .0
        }
    };
    let (a, b) = tokio::join!(put(6), put(7));
    let mut statuses = [a, b];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412]);
    // A stale tag is refused on every kind of write.
    let (status, _, body) = admin(
        &http,
        &server,
        Method::DELETE,
        "/v1/admin/rules/r",
        None,
        Some(&tag),
    )
    .await;
    assert_eq!(status, 412, "{body}");
    let (status, _, _) = admin(
        &http,
        &server,
        Method::PATCH,
        "/v1/admin/rules/r",
        Some(json!({"mode": "shadow"})),
        Some(&tag),
    )
    .await;
    assert_eq!(status, 412);
}

#[tokio::test]
async fn precedence_decides_checks_and_the_explain_call_agrees() {
    let dir = rules_dir();
    let (_file, server) = worker(&dir.path().join("rules.json"), "");
    let http = client();
    let key = "k-premium-partner-0123456789";
    let q = |limit: u64| json!([{ "limit": limit, "period": "1h" }]);
    for rule in [
        json!({"name": "everyone", "scope": "global", "quotas": q(50)}),
        json!({"name": "anon", "scope": "tier", "match": "anonymous", "quotas": q(40)}),
        json!({"name": "login", "scope": "global", "resource": "login", "quotas": q(30)}),
        json!({"name": "uploads", "scope": "global", "resource": "/api/upload", "quotas": q(25)}),
        json!({"name": "net", "scope": "ip", "match": "203.0.113.0/24", "quotas": q(20)}),
        json!({"name": "host", "scope": "ip", "match": "203.0.113.7/32", "quotas": q(15)}),
        json!({"name": "partner", "scope": "api_key", "match": key, "quotas": q(1000)}),
    ] {
        add_rule(&http, &server, rule).await;
    }
    let table = [
        (json!({"client": "c1"}), Value::from("anon")),
        (
            json!({"client": "c1", "tier": "api_key"}),
            "everyone".into(),
        ),
        (json!({"client": "c1", "tier": "admin"}), Value::Null),
        (json!({"client": "c1", "resource": "login"}), "login".into()),
        (
            json!({"client": "c1", "resource": "/api/upload/photo"}),
            "uploads".into(),
        ),
        (
            json!({"client": "c1", "resource": "/api/uploads"}),
            "anon".into(),
        ),
        (
            json!({"client": "203.0.113.9", "resource": "login"}),
            "net".into(),
        ),
        (
            json!({"client": "203.0.113.7", "resource": "login"}),
            "host".into(),
        ),
        (
            json!({"client": key, "tier": "premium", "resource": "login"}),
            "partner".into(),
        ),
    ];
    for (asked, rule) in table {
        let mut peek = asked.clone();
        peek["dry_run"] = json!(true);
        let (status, answer) = check(&http, &server, peek).await;
        assert_eq!(status, 200, "{asked}: {answer}");
        assert_eq!(answer["rule"], rule, "{asked}: {answer}");
        let (status, _, explained) = admin(
            &http,
            &server,
            Method::POST,
            "/v1/admin/explain",
            Some(asked.clone()),
            None,
        )
        .await;
        assert_eq!(status, 200, "{explained}");
        assert_eq!(explained["decided_by"], rule, "{asked}: {explained}");
        if rule.is_string() {
            assert_eq!(
                answer["limit"], explained["policy"]["quotas"][0]["limit"],
                "{asked}"
            );
        }
    }
    // The raw key is nowhere in what the service answers or logs.
    let (_, _, doc) = admin(&http, &server, Method::GET, "/v1/admin/rules", None, None).await;
    assert!(!doc.to_string().contains(key), "{doc}");
    assert!(!server.logs().contains(key));
}

/// `/v1/admin/*` records, once the worker has flushed (about a second).
async fn until_recorded(
    http: &reqwest::Client,
    server: &Server,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..100 {
        let (status, _, body) = admin(http, server, Method::GET, path, None, None).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never showed what was expected");
}

#[tokio::test]
async fn a_shadow_rule_never_denies_but_is_recorded() {
    let dir = rules_dir();
    let (_file, server) = worker(&dir.path().join("rules.json"), "");
    let http = client();
    add_rule(&http, &server, json!({"name": "trial", "scope": "global", "resource": "search", "mode": "shadow", "quotas": [{"limit": 2, "period": "1h"}]})).await;
    for i in 0..5 {
        let (status, answer) = check(
            &http,
            &server,
            json!({"client": "203.0.113.50", "resource": "search"}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(answer["allowed"], true, "check {i}: {answer}");
        // The tier decides; the shadow rule only watches.
        assert_eq!(answer["rule"], Value::Null);
    }
    let found = until_recorded(
        &http,
        &server,
        "/v1/admin/violations?since=1h&rule=trial",
        |v| v["violations"].as_array().is_some_and(|a| a.len() == 3),
    )
    .await;
    for v in found["violations"].as_array().unwrap() {
        assert_eq!(v["shadow"], true, "{v}");
        assert_eq!(v["resource"], "search");
        assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
        assert_eq!(v["client"].as_str().unwrap().len(), 32, "a hash: {v}");
    }
    assert!(!found.to_string().contains("203.0.113.50"));
    let stats = until_recorded(
        &http,
        &server,
        "/v1/admin/stats?window=1h&step=1m&rule=trial",
        |s| s["totals"]["shadow_denied"] == 3,
    )
    .await;
    assert_eq!(stats["totals"]["denied"], 0, "{stats}");
    let all = until_recorded(&http, &server, "/v1/admin/stats?window=1h&step=1h", |s| {
        s["totals"]["checks"] == 5
    })
    .await;
    assert_eq!(all["totals"]["allowed"], 5, "{all}");
}

#[tokio::test]
async fn the_kill_switch_allows_everything_and_counts_what_it_would_deny() {
    let dir = rules_dir();
    let (_file, server) = worker(&dir.path().join("rules.json"), "");
    let http = client();
    add_rule(
        &http,
        &server,
        json!({"name": "tight", "scope": "global", "quotas": [{"limit": 1, "period": "1h"}]}),
    )
    .await;
    let ask = || check(&http, &server, json!({"client": "kill-switch-client"}));
    assert_eq!(ask().await.1["allowed"], true);
    assert_eq!(ask().await.1["allowed"], false);

    let (status, _, body) = admin(
        &http,
        &server,
        Method::POST,
        "/v1/admin/enforcement",
        Some(json!({"enforce": false})),
        None,
    )
    .await;
    assert_eq!((status, &body["enforce"]), (200, &json!(false)), "{body}");
    for _ in 0..5 {
        let (_, answer) = ask().await;
        assert_eq!(answer["allowed"], true, "{answer}");
        assert_eq!(answer["retry_after_ms"], Value::Null);
    }
    let stats = until_recorded(
        &http,
        &server,
        "/v1/admin/stats?window=1h&step=1h&rule=tight",
        |s| s["totals"]["shadow_denied"] == 5,
    )
    .await;
    assert_eq!(stats["totals"]["denied"], 1, "{stats}");

    let (status, _, _) = admin(
        &http,
        &server,
        Method::POST,
        "/v1/admin/enforcement",
        Some(json!({"enforce": true})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ask().await.1["allowed"], false);
    let (_, _, audit) = admin(&http, &server, Method::GET, "/v1/admin/audit", None, None).await;
    let actions: Vec<&str> = audit["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["enforcement", "enforcement", "create"], "{audit}");
    assert_eq!(audit["changes"][2]["token"], "admin-token");
}

#[tokio::test]
async fn peek_takes_nothing_and_refund_restores_up_to_capacity() {
    let dir = rules_dir();
    let (_file, server) = worker(
        &dir.path().join("rules.json"),
        "[tiers.anonymous]\nquotas = [{ limit = 3, period = \"1h\" }]\n",
    );
    let http = client();
    let body = |extra: Value| {
        let mut b = json!({"client": "peek-client"});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for _ in 0..20 {
        let (_, answer) = check(&http, &server, body(json!({"dry_run": true}))).await;
        assert_eq!(
            (answer["allowed"].as_bool(), answer["remaining"].as_u64()),
            (Some(true), Some(2)),
            "{answer}"
        );
    }
    for remaining in [2, 1, 0] {
        assert_eq!(
            check(&http, &server, body(json!({}))).await.1["remaining"],
            remaining
        );
    }
    assert_eq!(
        check(&http, &server, body(json!({}))).await.1["allowed"],
        false
    );
    let refund = |cost: u64| {
        let http = http.clone();
        let url = server.url("/v1/refund");
        async move {
            let res = http
                .post(url)
                .json(&json!({"client": "peek-client", "cost": cost}))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (status, answer) = refund(2).await;
    assert_eq!(
        (status, answer["remaining"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    // Never above capacity.
    let (_, answer) = refund(3).await;
    assert_eq!(answer["remaining"], 3, "{answer}");
    let (status, answer) = refund(4).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        check(&http, &server, body(json!({"dry_run": true})))
            .await
            .1["remaining"],
        2
    );
}

#[tokio::test]
async fn rules_written_through_the_api_survive_a_restart_without_redis() {
    let dir = rules_dir();
    let file = dir.path().join("rules.json");
    let seeds = "[[rules]]\nname = \"seeded\"\nscope = \"tier\"\nmatch = \"premium\"\nquotas = [{ limit = 9, period = \"1m\" }]\n";
    let http = client();
    {
        let (_config, server) = worker(&file, seeds);
        // The file's rules seed the empty store.
        let (_, _, doc) = admin(&http, &server, Method::GET, "/v1/admin/rules", None, None).await;
        assert_eq!(doc["rules"][0]["name"], "seeded", "{doc}");
        add_rule(&http, &server, json!({"name": "login", "scope": "global", "resource": "login", "quotas": [{"limit": 2, "period": "1h"}]})).await;
    }
    // Restarted with other seeds: the stored rules are in force, not the seeds.
    let (_config, server) = worker(&file, "");
    let (_, _, doc) = admin(&http, &server, Method::GET, "/v1/admin/rules", None, None).await;
    let names: Vec<&str> = doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["seeded", "login"], "{doc}");
    assert_eq!(doc["version"], 1);
    let login = json!({"client": "restart-client", "resource": "login"});
    assert_eq!(
        check(&http, &server, login.clone()).await.1["rule"],
        "login"
    );
    assert_eq!(
        check(&http, &server, login.clone()).await.1["allowed"],
        true
    );
    assert_eq!(check(&http, &server, login).await.1["allowed"], false);

    // Export and import: the backup and the restore.
    let (_, _, backup) = admin(
        &http,
        &server,
        Method::GET,
        "/v1/admin/rules/export",
        None,
        None,
    )
    .await;
    let (status, _, _) = admin(
        &http,
        &server,
        Method::PUT,
        "/v1/admin/rules/import",
        Some(json!({"rules": []})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, restored) = admin(
        &http,
        &server,
        Method::PUT,
        "/v1/admin/rules/import",
        Some(backup.clone()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["rules"], backup["rules"]);
}

#[tokio::test]
async fn guarded_routes_obey_rules_on_their_path() {
    let dir = rules_dir();
    let (_file, server) = worker(&dir.path().join("rules.json"), "");
    let http = client();
    add_rule(&http, &server, json!({"name": "v1", "scope": "ip", "match": "127.0.0.0/8", "resource": "/v1", "quotas": [{"limit": 2, "period": "1h"}]})).await;
    let get = || http.get(server.url("/v1/whoami")).send();
    for _ in 0..2 {
        let res = get().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-ratelimit-limit"], "2");
    }
    let denied = get().await.unwrap();
    assert_eq!(denied.status(), 429);
    assert!(
        denied.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("q=2"),
        "{:?}",
        denied.headers()
    );
}

#[tokio::test]
async fn the_admin_api_can_have_an_address_of_its_own() {
    let dir = rules_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let admin_at = format!("127.0.0.1:{port}");
    let file = config_file("");
    let server = Server::start(&[
        "--config",
        path(&file),
        "--admin-token",
        ADMIN_TOKEN,
        "--rules-file",
        dir.path().join("rules.json").to_str().unwrap(),
        "--admin-listen",
        &admin_at,
    ]);
    let http = client();
    // Not beside the check API...
    let res = http
        .get(server.url("/v1/admin/rules"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // ...but on its own address, with its own token check; the check API is not there.
    let url = format!("http://{admin_at}");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(res) = http
            .get(format!("{url}/v1/admin/rules"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
        {
            answered = Some(res.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered, Some(reqwest::StatusCode::OK));
    let res = http
        .get(format!("{url}/v1/admin/rules"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = http
        .post(format!("{url}/v1/check"))
        .json(&json!({"client": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[test]
fn the_admin_token_and_raw_keys_never_show_in_the_printed_config() {
    let seeds = config_file(
        "[[rules]]\nname = \"k\"\nscope = \"api_key\"\nmatch = \"k-raw-seed-key-0123456789\"\nquotas = [{ limit = 1, period = \"1s\" }]\n",
    );
    let (code, out, err) = run(
        command(),
        &[
            "--config",
            path(&seeds),
            "--admin-token",
            ADMIN_TOKEN,
            "config",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(ADMIN_TOKEN) && !out.contains("k-raw-seed-key"),
        "{out}"
    );
    assert!(out.contains("sha256:"), "{out}");
    // A token too short to be safe is refused, without being echoed.
    let (code, _, err) = run(command(), &["--admin-token", "short", "config"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("admin_token") && !err.contains("short\""),
        "{err}"
    );
}
