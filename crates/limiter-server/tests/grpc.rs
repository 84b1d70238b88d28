//! Envoy's rate limit service over gRPC: a tonic client built from `envoy-types` against
//! real `ratelimitd` processes on real Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, rate_limit::Unit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use support::*;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A descriptor config with one entry of each kind (shared with the Python client's test).
const EDGE: &str = include_str!("fixtures/edge.yaml");

type Rls = RateLimitServiceClient<Channel>;

async fn connect(addr: SocketAddr) -> Rls {
    RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: hits,
    }
}

async fn ask(rls: &mut Rls, domain: &str, entries: &[(&str, &str)]) -> RateLimitResponse {
    rls.should_rate_limit(request(domain, vec![descriptor(entries)], 0))
        .await
        .unwrap()
        .into_inner()
}

fn code(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).unwrap()
}

fn status_code(s: &DescriptorStatus) -> Code {
    Code::try_from(s.code).unwrap()
}

/// `(requests_per_unit, unit, name)` of a status's current limit.
fn limit_of(s: &DescriptorStatus) -> Option<(u32, Unit, String)> {
    s.current_limit.as_ref().map(|l| {
        (
            l.requests_per_unit,
            Unit::try_from(l.unit).unwrap(),
            l.name.clone(),
        )
    })
}

fn reset_of(s: &DescriptorStatus) -> Duration {
    let d = s
        .duration_until_reset
        .as_ref()
        .expect("duration_until_reset");
    Duration::new(d.seconds.try_into().unwrap(), d.nanos.try_into().unwrap())
}

fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A worker on `redis_url` serving the rate limit service from `rls_config`.
fn rls_worker(redis_url: &str, rls_config: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--redis-url",
        redis_url,
        "--hash-secret",
        SECRET,
        "--grpc-listen",
        "127.0.0.1:0",
        "--rls-config",
        rls_config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_are_answered_as_the_config_says() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 5).await;
    let dir = config_dir(&[("edge.yaml", EDGE)]);
    let server = rls_worker(&url, dir.path(), &[]);
    let http = client();
    ready(&http, &server).await;
    let mut rls = connect(server.grpc_addr()).await;

    // A wildcard entry: a bucket per value, 3 a minute, burst 3.
    for left in [2, 1, 0] {
        let r = ask(&mut rls, "edge", &[("remote_address", "198.51.100.77")]).await;
        assert_eq!(code(&r), Code::Ok);
        let s = &r.statuses[0];
        assert_eq!(status_code(s), Code::Ok);
        assert_eq!(limit_of(s), Some((3, Unit::Minute, String::new())));
        assert_eq!(s.limit_remaining, left);
        let reset = reset_of(s);
        assert!(
            reset > Duration::ZERO && reset <= Duration::from_secs(60),
            "{reset:?}"
        );
    }
    let denied = ask(&mut rls, "edge", &[("remote_address", "198.51.100.77")]).await;
    assert_eq!(code(&denied), Code::OverLimit);
    assert_eq!(status_code(&denied.statuses[0]), Code::OverLimit);
    assert_eq!(denied.statuses[0].limit_remaining, 0);
    // The project's headers, for Envoy to pass on.
    let headers: Vec<(&str, &str)> = denied
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "ratelimit-policy",
        "ratelimit",
        "retry-after",
    ] {
        assert!(
            headers.iter().any(|(k, _)| *k == name),
            "{name} missing: {headers:?}"
        );
    }
    assert!(headers.contains(&("x-ratelimit-limit", "3")), "{headers:?}");
    // Another value, another bucket.
    let other = ask(&mut rls, "edge", &[("remote_address", "198.51.100.78")]).await;
    assert_eq!(other.statuses[0].limit_remaining, 2);

    // Nested entries: the limit sits on the last one; the first alone has none.
    let login = ask(
        &mut rls,
        "edge",
        &[("path", "/login"), ("remote_address", "198.51.100.77")],
    )
    .await;
    assert_eq!(
        limit_of(&login.statuses[0]),
        Some((2, Unit::Minute, "login".to_owned()))
    );
    assert_eq!(login.statuses[0].limit_remaining, 1);
    let path_only = ask(&mut rls, "edge", &[("path", "/login")]).await;
    assert_eq!(code(&path_only), Code::Ok);
    assert_eq!(path_only.statuses[0].current_limit, None);

    // A value prefix marked unlimited: OK, no limit, nothing counted.
    let css = ask(&mut rls, "edge", &[("path", "/static/site.css")]).await;
    assert_eq!(status_code(&css.statuses[0]), Code::Ok);
    assert_eq!(css.statuses[0].current_limit, None);
    assert_eq!(css.statuses[0].limit_remaining, u32::MAX);

    // Shadow mode: over the limit is still OK, with the limit shown and counted.
    for _ in 0..3 {
        let r = ask(&mut rls, "edge", &[("user", "alice@example.com")]).await;
        assert_eq!(code(&r), Code::Ok);
        assert_eq!(
            limit_of(&r.statuses[0]),
            Some((1, Unit::Minute, String::new()))
        );
    }

    // hits_addend: the request's, then a descriptor's own, then more than the bucket holds.
    let bulk = |hits: u32, own: Option<u64>| {
        let mut d = descriptor(&[("plan", "bulk")]);
        d.hits_addend = own.map(|value| UInt64Value { value });
        request("edge", vec![d], hits)
    };
    let r = rls
        .should_rate_limit(bulk(4, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 6));
    let r = rls
        .should_rate_limit(bulk(4, Some(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 1));
    let r = rls
        .should_rate_limit(bulk(2, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), Code::OverLimit);
    let r = rls
        .should_rate_limit(bulk(1, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 0));
    let r = rls
        .should_rate_limit(bulk(11, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&r),
        Code::OverLimit,
        "more than the bucket holds never passes"
    );
    // A descriptor's hits_addend of 0 asks without taking: an empty bucket is not over.
    let r = rls
        .should_rate_limit(bulk(0, Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 0));
    // is_negative_hits gives back.
    let give_back = |hits: u64| {
        let mut back = descriptor(&[("plan", "bulk")]);
        back.hits_addend = Some(UInt64Value { value: hits });
        back.is_negative_hits = true;
        request("edge", vec![back], 0)
    };
    let r = rls
        .should_rate_limit(give_back(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 3));
    // Asking without taking says exactly what is left, and takes nothing.
    for _ in 0..2 {
        let r = rls
            .should_rate_limit(bulk(0, Some(0)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 3));
    }
    // Giving back more than the bucket holds fills it; it is never a denial.
    let r = rls
        .should_rate_limit(give_back(50))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 10));

    // requests_per_unit: 0 denies everything.
    let blocked = ask(&mut rls, "edge", &[("blocked", "x")]).await;
    assert_eq!(code(&blocked), Code::OverLimit);
    assert_eq!(
        limit_of(&blocked.statuses[0]),
        Some((0, Unit::Second, String::new()))
    );

    // replaces: the partner's limit replaces the per-client one in the same request.
    let r = rls
        .should_rate_limit(request(
            "edge",
            vec![
                descriptor(&[("client", "c1")]),
                descriptor(&[("partner", "acme")]),
            ],
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.statuses[0].current_limit, None);
    assert_eq!(limit_of(&r.statuses[1]).map(|l| l.0), Some(50));

    // An unknown domain, or a descriptor matching nothing: OK, no limit.
    let r = rls
        .should_rate_limit(request(
            "nowhere",
            vec![
                descriptor(&[("remote_address", "x")]),
                descriptor(&[("a", "b")]),
            ],
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), Code::Ok);
    assert_eq!(r.statuses.len(), 2);
    assert!(
        r.statuses
            .iter()
            .all(|s| status_code(s) == Code::Ok && s.current_limit.is_none())
    );
    let r = ask(&mut rls, "edge", &[("unconfigured", "x")]).await;
    assert_eq!(
        (code(&r), r.statuses[0].current_limit.clone()),
        (Code::Ok, None)
    );

    // Malformed requests are refused, naming the field.
    let e = rls
        .should_rate_limit(request("", vec![descriptor(&[("a", "b")])], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "domain: must not be empty");
    let e = rls
        .should_rate_limit(request("edge", vec![], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // A request larger than any Envoy sends is refused unread (64 KiB).
    let huge = "x".repeat(100_000);
    let e = rls
        .should_rate_limit(request(
            "edge",
            vec![descriptor(&[("remote_address", &huge)])],
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");

    // Counted by descriptor (the config's path, never a request's value), on Redis.
    let text = metrics(&http, &server).await;
    for line in [
        r#"ratelimit_rls_descriptors_total{domain="edge",descriptor="user",code="shadow_over_limit",backend="redis"} 2"#,
        r#"ratelimit_rls_descriptors_total{domain="edge",descriptor="remote_address",code="over_limit",backend="redis"} 1"#,
        r#"ratelimit_rls_requests_total{domain="",code="ok"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // Descriptor values are hashed before any backend sees them, and never logged.
    let keys = redis_keys(&url).await;
    assert!(!keys.is_empty());
    let logs = server.logs();
    for raw in ["198.51.100.77", "alice@example.com", "acme", "bulk"] {
        assert!(
            !keys.iter().any(|k| k.contains(raw)),
            "{raw} in a Redis key: {keys:?}"
        );
        assert!(!logs.contains(raw), "{raw} logged");
        assert!(!text.contains(raw), "{raw} in metrics");
    }
}

async fn redis_keys(url: &str) -> Vec<String> {
    let client = limiter_redis::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    limiter_redis::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_denied_by_one_descriptor_takes_from_none() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 6).await;
    let dir = config_dir(&[("edge.yaml", EDGE)]);
    let server = rls_worker(&url, dir.path(), &[]);
    ready(&client(), &server).await;
    let mut rls = connect(server.grpc_addr()).await;

    // Exhaust the login bucket of one address.
    let login = [("path", "/login"), ("remote_address", "203.0.113.9")];
    for _ in 0..2 {
        assert_eq!(code(&ask(&mut rls, "edge", &login).await), Code::Ok);
    }
    // The address's own bucket (3) would admit, the login one denies: nothing is taken,
    // however often it is tried.
    for _ in 0..5 {
        let r = rls
            .should_rate_limit(request(
                "edge",
                vec![
                    descriptor(&[("remote_address", "203.0.113.9")]),
                    descriptor(&login),
                ],
                0,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&r), Code::OverLimit);
        assert_eq!(status_code(&r.statuses[0]), Code::Ok);
        assert_eq!(status_code(&r.statuses[1]), Code::OverLimit);
    }
    let alone = ask(&mut rls, "edge", &[("remote_address", "203.0.113.9")]).await;
    assert_eq!(
        alone.statuses[0].limit_remaining, 2,
        "a denied request took from another descriptor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_one_redis_admit_exactly_the_limit() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 7).await;
    let dir = config_dir(&[(
        "api.yaml",
        "domain: api\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: hour, requests_per_unit: 60}\n",
    )]);
    let workers: Vec<Server> = (0..3).map(|_| rls_worker(&url, dir.path(), &[])).collect();
    let http = client();
    for w in &workers {
        ready(&http, w).await;
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        for _ in 0..4 {
            let mut rls = connect(w.grpc_addr()).await;
            let admitted = admitted.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let r = ask(&mut rls, "api", &[("tenant", "t-1")]).await;
                    assert!(r.statuses[0].current_limit.is_some(), "worker {i}");
                    if code(&r) == Code::Ok {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 240 asked across three workers within well under a minute (a token per minute).
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(
        (60..=61).contains(&admitted),
        "{admitted} admitted for a limit of 60"
    );
}

/// Asks for `entries` in a loop until stopped: (answers, errors, the last limit seen).
fn load(
    addr: SocketAddr,
    domain: &'static str,
    entries: &'static [(&'static str, &'static str)],
) -> (Arc<Load>, tokio::task::JoinHandle<()>) {
    let state = Arc::new(Load::default());
    let shared = state.clone();
    let task = tokio::spawn(async move {
        let mut rls = connect(addr).await;
        while !shared.stop.load(Ordering::Relaxed) {
            match rls
                .should_rate_limit(request(domain, vec![descriptor(entries)], 0))
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    shared.answers.fetch_add(1, Ordering::Relaxed);
                    if code(&r) == Code::OverLimit {
                        shared.over.fetch_add(1, Ordering::Relaxed);
                    }
                    let limit = r.statuses[0]
                        .current_limit
                        .as_ref()
                        .map_or(0, |l| l.requests_per_unit);
                    shared.limit.store(u64::from(limit), Ordering::Relaxed);
                }
                Err(e) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("error: {e}");
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (state, task)
}

#[derive(Default)]
struct Load {
    answers: AtomicU64,
    over: AtomicU64,
    errors: AtomicU64,
    limit: AtomicU64,
    stop: std::sync::atomic::AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_reloads_under_load_and_a_broken_file_keeps_the_old_one() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 8).await;
    let limit = |n: u32| {
        format!(
            "domain: api\ndescriptors:\n  - key: tenant\n    rate_limit: {{unit: hour, requests_per_unit: {n}}}\n"
        )
    };
    let dir = config_dir(&[("api.yaml", &limit(5))]);
    let file = dir.path().join("api.yaml");
    // The file itself, not its directory: watched through its directory all the same.
    let server = rls_worker(&url, &file, &[]);
    ready(&client(), &server).await;
    let (state, task) = load(server.grpc_addr(), "api", &[("tenant", "t-2")]);
    until(
        "the first limit denies",
        Duration::from_secs(10),
        async || state.over.load(Ordering::Relaxed) > 0,
    )
    .await;
    assert_eq!(state.limit.load(Ordering::Relaxed), 5);

    // An editor's save: a new file renamed over the old one.
    let changed = Instant::now();
    let tmp = dir.path().join(".api.yaml.tmp");
    std::fs::write(&tmp, limit(100_000)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    until("the new limit", Duration::from_secs(5), async || {
        state.limit.load(Ordering::Relaxed) == 100_000
    })
    .await;
    eprintln!("new limit in force after {:?}", changed.elapsed());
    let over = state.over.load(Ordering::Relaxed);
    let answers = state.answers.load(Ordering::Relaxed);
    until("more answers", Duration::from_secs(5), async || {
        state.answers.load(Ordering::Relaxed) > answers + 50
    })
    .await;
    assert_eq!(
        state.over.load(Ordering::Relaxed),
        over,
        "denied under the new, larger limit"
    );

    // A broken file, written in place: refused, logged, the limit in force stays.
    std::fs::write(&file, "domain: api\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n").unwrap();
    until("the refusal logged", Duration::from_secs(5), async || {
        server.logs().contains("rate limit service config refused")
    })
    .await;
    let answers = state.answers.load(Ordering::Relaxed);
    until("more answers", Duration::from_secs(5), async || {
        state.answers.load(Ordering::Relaxed) > answers + 50
    })
    .await;
    assert_eq!(state.limit.load(Ordering::Relaxed), 100_000);
    assert!(
        server.logs().contains("fortnight"),
        "the refusal names the bad value"
    );

    state.stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        state.errors.load(Ordering::Relaxed),
        0,
        "calls failed during reloads"
    );
    let text = metrics(&client(), &server).await;
    assert!(
        text.contains(r#"ratelimit_rls_config_reloads_total{result="error"}"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_under_load_answers_come_from_memory_then_redis_again() {
    let redis = TestRedis::container_on_fixed_port().await;
    let dir = config_dir(&[(
        "api.yaml",
        "domain: api\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: second, requests_per_unit: 1000000}\n",
    )]);
    let server = rls_worker(&redis.url, dir.path(), &[]);
    let http = client();
    ready(&http, &server).await;
    let addr = server.grpc_addr();
    let loads: Vec<_> = (0..3)
        .map(|_| load(addr, "api", &[("tenant", "t-3")]))
        .collect();
    let backend_count = |text: &str, backend: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("ratelimit_rls_descriptors_total")
                    && l.contains(r#"code="ok""#)
                    && l.contains(&format!(r#"backend="{backend}""#))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(backend_count(&metrics(&http, &server).await, "redis") > 0);

    redis.container_handle().stop().await.unwrap();
    let stopped = Instant::now();
    let mut from_memory = 0;
    while stopped.elapsed() < Duration::from_secs(20) {
        from_memory = backend_count(&metrics(&http, &server).await, "memory");
        if from_memory > 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        from_memory > 200,
        "not answering from memory: {from_memory}"
    );
    let health = ready(&http, &server).await;
    assert_eq!(health["status"], "degraded", "{health}");

    redis.container_handle().start().await.unwrap();
    let on_redis = backend_count(&metrics(&http, &server).await, "redis");
    let restarted = Instant::now();
    loop {
        if backend_count(&metrics(&http, &server).await, "redis") > on_redis + 100 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "never back on Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (state, task) in loads {
        state.stop.store(true, Ordering::Relaxed);
        task.await.unwrap();
        assert_eq!(
            state.errors.load(Ordering::Relaxed),
            0,
            "a call failed during the outage"
        );
        assert_eq!(state.over.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_readiness_and_says_not_serving_while_draining() {
    let dir = config_dir(&[("edge.yaml", EDGE)]);
    let server = Server::start_with(
        {
            let mut cmd = command();
            cmd.env("RATELIMIT_SHUTDOWN_GRACE_MS", "5000");
            cmd.env("RATELIMIT_GRPC_LISTEN", "127.0.0.1:0");
            cmd.env("RATELIMIT_RLS_CONFIG", dir.path());
            cmd
        },
        &[],
    );
    ready(&client(), &server).await;
    let addr = server.grpc_addr();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    // Serving as soon as readiness says ready (the health service follows it at once).
    let started = Instant::now();
    while status("").await != ServingStatus::Serving {
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "not SERVING once ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status("envoy.service.ratelimit.v3.RateLimitService").await,
        ServingStatus::Serving
    );
    let e = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    while status("").await != ServingStatus::NotServing {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still SERVING while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status("envoy.service.ratelimit.v3.RateLimitService").await,
        ServingStatus::NotServing
    );
    // Still answering while balancers move away.
    let mut rls = RateLimitServiceClient::new(channel);
    let r = ask(&mut rls, "edge", &[("remote_address", "x")]).await;
    assert_eq!(code(&r), Code::Ok);
    let exit = server.wait(Duration::from_secs(20));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_seen() {
    // Kubernetes mounts a ConfigMap as `name -> ..data/name`, `..data -> ..<timestamp>`,
    // and updates it by pointing a new `..data` at a new directory with one rename.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let limit = |n: u32| {
        format!(
            "domain: api\ndescriptors:\n  - key: tenant\n    rate_limit: {{unit: hour, requests_per_unit: {n}}}\n"
        )
    };
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/api.yaml"), limit(7)).unwrap();
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/api.yaml", root.join("api.yaml")).unwrap();
    let server = Server::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--rls-config",
        root.to_str().unwrap(),
    ]);
    ready(&client(), &server).await;
    let mut rls = connect(server.grpc_addr()).await;
    let now = |r: &RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit)
    };
    assert_eq!(
        now(&ask(&mut rls, "api", &[("tenant", "t")]).await),
        Some(7)
    );

    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/api.yaml"), limit(9)).unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    let started = Instant::now();
    while now(&ask(&mut rls, "api", &[("tenant", "t")]).await) != Some(9) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the swap was not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_descriptor_configs_stop_the_start_naming_the_file_and_field() {
    let dir = config_dir(&[(
        "edge.yaml",
        "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: {unit: second}\n",
    )]);
    let (code, _, stderr) = run(
        command(),
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--rls-config",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("rls_config: ")
            && stderr.contains("edge.yaml: descriptors[0].rate_limit.requests_per_unit: missing"),
        "{stderr}"
    );
    let (code, _, stderr) = run(command(), &["--rls-config", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("rls_config: set grpc_listen"), "{stderr}");
}
