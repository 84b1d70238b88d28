//! `ratelimitd` end to end over real HTTP, on its default in-memory backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// The default anonymous tier, 100 a minute, refills a token every 600 ms.
const ANONYMOUS_REFILL: Duration = Duration::from_millis(600);
const PREMIUM_KEY: &str = "k-premium-e2e-0123456789abcdef";

fn premium_config() -> tempfile::NamedTempFile {
    config_file(&format!(
        "[[api_keys]]\nname = \"e2e\"\nsha256 = \"{}\"\ntier = \"premium\"\n",
        limiter_http::ApiKeys::hash_key(PREMIUM_KEY)
    ))
}

#[tokio::test]
async fn the_101st_anonymous_request_in_a_minute_is_429() {
    let server = Server::start(&[]);
    let http = client();
    // 100 a minute: a token refills every 600 ms.
    let res = until_denied(100, ANONYMOUS_REFILL, || async {
        let res = http.get(server.url("/v1/whoami")).send().await.unwrap();
        match res.status().as_u16() {
            200 => ControlFlow::Continue(()),
            429 => ControlFlow::Break(res),
            other => panic!("answered {other}"),
        }
    })
    .await;
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], 429);

    // The same through the check API: the 101st decision for one client is a denial.
    let client_id = unique("anon");
    let d = until_denied(100, ANONYMOUS_REFILL, || async {
        let (status, d) = check(&http, &server, json!({ "client": client_id })).await;
        assert_eq!(status, 200, "{d}");
        if d["allowed"] == true {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(d)
        }
    })
    .await;
    assert_eq!(d["allowed"], false);
    assert_eq!(d["limit"], 100);
    assert_eq!(d["remaining"], 0);
    assert_eq!(d["backend"], "memory");
    assert!(d["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_premium_key_gets_5000() {
    let file = premium_config();
    let server = Server::start(&["--config", path(&file)]);
    let http = client();
    let started = std::time::Instant::now();
    let res = http
        .get(server.url("/v1/whoami"))
        .header("x-api-key", PREMIUM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-ratelimit-limit"], "5000");
    let who: Value = res.json().await.unwrap();
    assert_eq!(who["tier"], "premium");

    // 5,199 more from 8 concurrent tasks: the bucket holds 5,000, and at 5000/min one
    // token refills every 12 ms, so the admitted count is 5,000 plus the refills of the
    // time it took, and not one more.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url) = (http.clone(), server.url("/v1/whoami"));
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            for _ in 0..650 {
                let res = http
                    .get(&url)
                    .header("x-api-key", PREMIUM_KEY)
                    .send()
                    .await
                    .unwrap();
                allowed += usize::from(res.status() == 200);
            }
            allowed
        }));
    }
    let mut allowed = 1;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    let refills = usize::try_from(started.elapsed().as_millis() / 12).unwrap();
    assert!(
        (5000..=5000 + refills).contains(&allowed),
        "premium admitted {allowed} of 5201 (bucket 5000, {refills} refills at most)"
    );

    let (_, d) = check(
        &http,
        &server,
        json!({ "client": unique("p"), "tier": "premium" }),
    )
    .await;
    assert_eq!(d["limit"], 5000);
    assert_eq!(d["remaining"], 4999);
}

async fn expect_problem(server: &Server, body: reqwest::Body, status: u16, field: &str) {
    let res = client()
        .post(server.url("/v1/check"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["status"], status);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(field),
        "detail {detail:?} does not name {field}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let server = Server::start(&[]);
    let cases: [(&str, &str); 10] = [
        (r#"{"client": "#, "body"),
        (r#"not json"#, "body"),
        (r#"{"tier": "premium"}"#, "body"),
        (r#"{"client": "a", "tier": "gold"}"#, "tier"),
        (r#"{"client": "a", "cost": -1}"#, "cost"),
        (r#"{"client": "a", "cost": 0}"#, "cost"),
        (r#"{"client": "a", "cost": 18446744073709551615}"#, "cost"),
        (r#"{"client": "a", "cost": 1e30}"#, "cost"),
        (r#"{"client": "", "cost": 1}"#, "client"),
        (r#"{"client": "a", "colour": "red"}"#, "colour"),
    ];
    for (body, field) in cases {
        expect_problem(&server, body.to_owned().into(), 400, field).await;
    }
    let long_client = json!({ "client": "x".repeat(limiter_server::MAX_CLIENT_LEN + 1) });
    expect_problem(&server, long_client.to_string().into(), 400, "client").await;

    // 10 MiB, declared and then chunked without a length. The server answers without
    // reading it all, so the answer is read while the body is still being written.
    let big = vec![b'a'; 10 << 20];
    let declared = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let answer = raw_exchange(&server, declared.into_bytes(), big.clone());
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{:?}",
        answer.lines().next()
    );
    assert!(answer.contains("application/problem+json") && answer.contains("larger than"));
    let mut chunked = Vec::new();
    for chunk in big.chunks(64 << 10) {
        chunked.extend(format!("{:x}\r\n", chunk.len()).bytes());
        chunked.extend(chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let head = "POST /v1/check HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let answer = raw_exchange(&server, head.into(), chunked);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{:?}",
        answer.lines().next()
    );

    // The service is still up and deciding.
    let (status, d) = check(&client(), &server, json!({ "client": "after" })).await;
    assert_eq!((status, d["allowed"].clone()), (200, json!(true)));
    assert!(!server.logs().contains("panicked"));
}

/// Writes `head` and `body` on a new connection (from a thread, ignoring a server that
/// stops reading) and returns everything the server answered.
fn raw_exchange(server: &Server, head: Vec<u8>, body: Vec<u8>) -> String {
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&head);
        let _ = writer.write_all(&body);
    });
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    drop(conn);
    let _ = sender.join();
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_one_mib_header_is_431_not_a_crash() {
    let server = Server::start(&[]);
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = b"GET /v1/whoami HTTP/1.1\r\nhost: x\r\nx-api-key: ".to_vec();
    request.extend(std::iter::repeat_n(b'k', 1 << 20));
    request.extend(b"\r\n\r\n");
    // The server may answer and close before reading it all.
    let _ = conn.write_all(&request);
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431, got {:?}",
        answer.lines().next()
    );
    // And a 64 KiB key is an unknown key: anonymous, served.
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key = "k".repeat(64 << 10);
    write!(
        conn,
        "GET /v1/whoami HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: {key}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{:?}",
        answer.lines().next()
    );
    assert!(answer.contains("\"tier\":\"anonymous\""));
}

#[tokio::test]
async fn admin_is_unlimited_and_unknown_routes_are_problems() {
    let server = Server::start(&[]);
    let http = client();
    for _ in 0..150 {
        let (status, d) = check(&http, &server, json!({ "client": "ops", "tier": "admin" })).await;
        assert_eq!(status, 200);
        assert_eq!(d["allowed"], true);
        assert_eq!(d["backend"], "none");
        assert_eq!(d["limit"], Value::Null);
    }
    let res = http.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn raw_keys_and_client_ids_never_reach_logs_or_metrics() {
    let file = premium_config();
    let server = Server::start(&["--config", path(&file)]);
    let http = client();
    let unknown_key = "k-unknown-SHOULD-NOT-LEAK-42";
    let raw_client = "client-id-SHOULD-NOT-LEAK-77";
    for _ in 0..120 {
        for key in [PREMIUM_KEY, unknown_key] {
            http.get(server.url("/v1/whoami"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap();
        }
        check(&http, &server, json!({ "client": raw_client })).await;
    }
    // Denials happened (logged at debug, which the server runs at here).
    let (_, d) = check(&http, &server, json!({ "client": raw_client })).await;
    assert_eq!(d["allowed"], false);
    let metrics = metrics(&http, &server).await;
    assert!(metrics.contains("ratelimit_checks_total"), "{metrics}");
    assert!(metrics.contains(r#"tier="premium""#));
    assert!(metrics.contains(r#"outcome="denied""#));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = server.logs();
    assert!(
        logs.contains("rate limited"),
        "no denial was logged; logs:\n{logs}"
    );
    for secret in [PREMIUM_KEY, unknown_key, raw_client, SECRET] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
        assert!(
            !metrics.contains(secret),
            "{secret} leaked into the metrics"
        );
    }
}

#[tokio::test]
async fn ipv6_addresses_of_one_64_share_a_bucket_behind_a_trusted_proxy() {
    let file = config_file(
        "trusted_proxies = [\"127.0.0.1/32\"]\n\
         [tiers.anonymous]\nquotas = [{ limit = 4, period = \"1h\" }]\n",
    );
    let server = Server::start(&["--config", path(&file)]);
    let http = client();
    let whoami = |address: &'static str| {
        let request = http
            .get(server.url("/v1/whoami"))
            .header("x-forwarded-for", format!("{address}, 127.0.0.1"));
        async move {
            let res = request.send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (status, body)
        }
    };
    // One subscriber's /64: any of its 2^64 addresses is the same client.
    let one_block = [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:a:b:c:d",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
    ];
    let mut hashes = Vec::new();
    for (i, address) in one_block.iter().cycle().take(8).enumerate() {
        let (status, body) = whoami(address).await;
        assert_eq!(
            status,
            if i < 4 { 200 } else { 429 },
            "request {i} from {address}"
        );
        if status == 200 {
            hashes.push(body["client"].clone());
        }
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // The next /64 is another client, with a bucket of its own.
    let (status, body) = whoami("2001:db8:1:3::1").await;
    assert_eq!(status, 200);
    assert_ne!(body["client"], hashes[0]);
}

#[tokio::test]
async fn check_ids_cannot_drain_a_guarded_clients_bucket() {
    let file = config_file("[tiers.anonymous]\nquotas = [{ limit = 3, period = \"1h\" }]\n");
    let server = Server::start(&["--config", path(&file)]);
    let http = client();
    // A caller of the check API names the guarded routes' identity of this test's address.
    for i in 0..5 {
        let (status, d) = check(&http, &server, json!({ "client": "ip:127.0.0.1" })).await;
        assert_eq!((status, d["allowed"] == true), (200, i < 3), "{d}");
    }
    // The address's own bucket is untouched.
    let res = http.get(server.url("/v1/whoami")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let who: Value = res.json().await.unwrap();
    assert_eq!(who["remaining"], 2, "{who}");
}
