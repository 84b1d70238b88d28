//! A Redis that answers with errors is an outage, never a reason to stop limiting: filled to
//! `maxmemory` with `noeviction` (OOM on every write), or with its password changed, under
//! load, `ratelimitd` serves no request unlimited, enforces the limits from memory and says
//! `degraded`; it is back on Redis once memory is freed or the password restored.
//!
//! (Before: 105 of 105 anonymous requests answered 200 with `"backend": "none"` and no
//! limit, `/v1/check` answered 503, and `/health/ready` said `ok`; a worker started while
//! its password was refused did the same.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use limiter_redis::redis::{self, aio::MultiplexedConnection};
use serde_json::{Value, json};
use support::*;

/// Each anonymous address may pass 5 times an hour: nothing refills during the test.
const LIMIT: u64 = 5;

/// Trusting this test as a proxy, probing often, and with a long deadline: a slow answer on
/// a loaded machine must not open the circuit, only a refusal (which comes back at once).
fn config() -> tempfile::NamedTempFile {
    config_file(&format!(
        "trusted_proxies = [\"127.0.0.1/32\"]\n\
         [tiers.anonymous]\nquotas = [{{ limit = {LIMIT}, period = \"1h\" }}]\n\
         [fallback]\nprobe_interval_ms = 200\ndeadline_ms = 2000\n"
    ))
}

async fn admin(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// What the load saw: (route, status, backend).
type Seen = Vec<(&'static str, u16, String)>;

/// Guarded requests from ever new addresses (behind the trusted proxy), and checks of ever
/// new clients: each one's first request is admitted, so it writes to Redis.
async fn load(http: reqwest::Client, base: String, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::new();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let address = format!("198.51.{}.{}", n / 250 % 250, n % 250);
        let guarded = http
            .get(format!("{base}/v1/whoami"))
            .header("x-forwarded-for", &address);
        seen.push(sent("whoami", guarded).await);
        let checked = http
            .post(format!("{base}/v1/check"))
            .json(&json!({ "client": format!("load-{n}") }));
        seen.push(sent("check", checked).await);
    }
    seen
}

/// The status of `request` and the backend its answer names.
async fn sent(
    route: &'static str,
    request: reqwest::RequestBuilder,
) -> (&'static str, u16, String) {
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let backend = body["backend"].as_str().unwrap_or("").to_owned();
    (route, status, backend)
}

async fn status(http: &reqwest::Client, server: &Server) -> Value {
    let res = http.get(server.url("/health/ready")).send().await.unwrap();
    assert_eq!(res.status(), 200, "readiness stays 200 while degraded");
    res.json().await.unwrap()
}

async fn until_status(http: &reqwest::Client, server: &Server, want: &str) -> Value {
    let started = Instant::now();
    loop {
        let health = status(http, server).await;
        if health["status"] == want {
            return health;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never {want}: {health}\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh client gets exactly its limit, decided by `backend`.
async fn limited_by(http: &reqwest::Client, server: &Server, backend: &str) {
    let client = unique("limited");
    let mut admitted = 0;
    for _ in 0..LIMIT + 5 {
        let (status, d) = check(http, server, json!({ "client": client })).await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["backend"], backend, "{d}");
        admitted += u64::from(d["allowed"] == true);
    }
    assert_eq!(admitted, LIMIT, "{client}");
}

fn failures(metrics: &str, kind: &str) -> u64 {
    let series = format!("ratelimit_redis_failures_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// Runs the load around `fault` and `heal`: checks that nothing was served unlimited, that
/// limits held from memory during the fault, and that Redis decides again after it.
async fn through(
    server: &Server,
    kind: &str,
    fault: impl std::future::Future<Output = ()>,
    heal: impl std::future::Future<Output = ()>,
) {
    let http = client();
    assert_eq!(ready(&http, server).await["status"], "ok");
    limited_by(&http, server, "redis").await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(http.clone(), server.url(""), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    fault.await;
    let health = until_status(&http, server, "degraded").await;
    assert_eq!(
        health["components"]["redis"]["status"], "unavailable",
        "{health}"
    );
    assert_eq!(health["components"]["memory"]["active"], true, "{health}");
    limited_by(&http, server, "memory").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = failures(&metrics(&http, server).await, kind);
    assert!(counted > 0, "no {kind} failure counted");

    heal.await;
    until_status(&http, server, "ok").await;
    limited_by(&http, server, "redis").await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();

    let unlimited: Vec<_> = seen.iter().filter(|(_, _, b)| b == "none").collect();
    assert!(unlimited.is_empty(), "served unlimited: {unlimited:?}");
    let failed: Vec<_> = seen
        .iter()
        .filter(|(route, s, _)| !matches!((route, s), (_, 200) | (&"whoami", 429)))
        .collect();
    assert!(failed.is_empty(), "not decided: {failed:?}");
    for backend in ["redis", "memory"] {
        assert!(
            seen.iter().any(|(_, _, b)| b == backend),
            "the load never saw {backend} decide ({} requests)",
            seen.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_is_an_outage_not_unlimited() {
    let redis = TestRedis::container().await;
    let file = config();
    let server = Server::worker(&file, &redis.url);
    let mut conn = admin(&redis.url).await;
    let fillers = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let fill = {
        let mut conn = conn.clone();
        let fillers = fillers.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await
                .unwrap();
            let used: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
                .unwrap();
            let _: () = redis::cmd("CONFIG")
                .arg(&["SET", "maxmemory-policy", "noeviction"])
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(used + 4_000_000)
                .query_async(&mut conn)
                .await
                .unwrap();
            // Fill it until Redis refuses a write.
            let value = vec![b'x'; 64 * 1024];
            for i in 0.. {
                let key = format!("filler:{i}");
                let set: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .query_async(&mut conn)
                    .await;
                match set {
                    Ok(()) => fillers.lock().unwrap().push(key),
                    Err(e) if e.code() == Some("OOM") => break,
                    Err(e) => panic!("filling Redis: {e}"),
                }
                assert!(i < 10_000, "Redis never ran out of memory");
            }
        }
    };
    let heal = async move {
        let keys = fillers.lock().unwrap().clone();
        let _: u64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    through(&server, "out_of_memory", fill, heal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_redis_password_is_an_outage_not_unlimited() {
    const OLD: &str = "old-password-1";
    const NEW: &str = "new-password-2";
    let redis = TestRedis::container().await;
    let mut conn = admin(&redis.url).await;
    let base = conn.clone();
    let password = move |p: &'static str| {
        let mut conn = base.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg(&["SET", "requirepass", p])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    password(OLD).await;
    let url = redis
        .url
        .replacen("redis://", &format!("redis://:{OLD}@"), 1);
    let file = config();
    let server = Server::worker(&file, &url);
    // The password changes and every connection must log in again (a restart, a rotation
    // that drops sessions): the workers' logins are refused.
    let rotate = async {
        password(NEW).await;
        let _: u64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    through(&server, "auth", rotate, password(OLD)).await;
    assert!(!server.logs().contains(OLD), "the password was logged");

    // A worker that starts while its password is refused (a restart during a rotation)
    // serves from memory from its first request, and joins Redis once the password works.
    password(NEW).await;
    let late = Server::worker(&file, &url);
    let http = client();
    let health = ready(&http, &late).await;
    assert_eq!(health["status"], "degraded", "{health}");
    limited_by(&http, &late, "memory").await;
    let res = http
        .get(late.url("/v1/whoami"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["backend"], "memory");
    assert!(failures(&metrics(&http, &late).await, "auth") > 0);
    password(OLD).await;
    until_status(&http, &late, "ok").await;
    limited_by(&http, &late, "redis").await;
    assert!(!late.logs().contains(OLD), "the password was logged");
}
