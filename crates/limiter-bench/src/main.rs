//! `limiter-bench`: drives a limiter with a closed loop of checks and prints one JSON object
//! of throughput, latency percentiles and outcomes.
//!
//! The `http` backend drives URLs (`ratelimitd`'s `/v1/whoami`, any route behind the
//! layer), spreading requests over every `--url` in turn: the load generator of the
//! docker-compose fleet.
//!
//! ```text
//! limiter-bench --backend http --url http://127.0.0.1:8080/v1/whoami \
//!     --concurrency 32 --duration 10 [--api-key KEY] [--json]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use limiter_core::{ClientKey, ClientKeyHasher, Policy, Quota, RateLimiter, Tier, TierPolicies};
use limiter_fallback::{Fallback, FallbackConfig};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_redis::{RedisConfig, RedisLimiter};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    /// The in-process limiter.
    Memory,
    /// `RedisLimiter` on `--redis-url`.
    Redis,
    /// `Fallback` of Redis on `--redis-url` to memory.
    Fallback,
    /// HTTP requests to `--url`: 2xx is allowed, 429 denied, anything else an error.
    Http,
    /// `PING` through the Redis backend's connections instead of a check: the round-trip
    /// floor of the same client, to compare latencies with.
    RedisPing,
}

#[derive(Debug, Parser)]
#[command(name = "limiter-bench", version, about)]
struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value = "memory")]
    backend: BackendKind,
    /// Redis for the redis and fallback backends.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// URL to request, for the http backend (repeat to spread requests over several).
    #[arg(long = "url", value_name = "URL", required_if_eq("backend", "http"))]
    urls: Vec<String>,
    /// Sent as `X-API-Key` on every HTTP request.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Checks in flight at once, each waiting for its answer before the next.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Distinct clients, checked in turn (library backends).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Tokens per check (library backends).
    #[arg(long, default_value_t = 1)]
    cost: u64,
    /// The quota, per second per client (library backends). The default admits everything,
    /// so every check takes the costlier path that writes.
    #[arg(long, default_value_t = 1_000_000_000)]
    limit: u64,
    /// The bucket's capacity (library backends); default: `--limit`. A small limit with a
    /// large burst admits everything too, but leaves buckets that take seconds to refill,
    /// so their Redis keys live as long as real clients' do instead of expiring within a
    /// millisecond.
    #[arg(long)]
    burst: Option<u64>,
    /// Open loop: offer this many checks per second in all, evenly spaced, instead of
    /// sending the next check as soon as the last is answered. A pacing thread releases the
    /// sends due every 100 µs to whichever tasks are free (Tokio's timers tick every
    /// millisecond, which would send in bursts of a millisecond's worth); a send that finds
    /// every task busy goes as soon as one is free, so the offered rate holds. Latency is
    /// measured from each send.
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Most buckets the memory limiter keeps (memory and fallback backends).
    #[arg(long, default_value_t = MemoryConfig::default().max_buckets)]
    max_buckets: usize,
    /// Multiplexed Redis connections (redis, fallback and redis-ping backends).
    #[arg(long, default_value_t = RedisConfig::from_url("").connections)]
    connections: usize,
    /// Most checks in one script call; 1 sends each check on its own (redis and fallback).
    #[arg(long, default_value_t = RedisConfig::from_url("").max_batch)]
    max_batch: usize,
    /// Seconds to wait for the first URL to answer before starting (http).
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
    /// Print the result as one JSON line (the default prints it pretty).
    #[arg(long)]
    json: bool,
    /// Instead of measuring, serve `GET /` on this address for an HTTP load generator:
    /// the route with the rate-limit layer (`--guarded`, memory backend, every request
    /// admitted) or without it, so the two can be compared.
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// With `--serve`: put the rate-limit layer in front of the route.
    #[arg(long)]
    guarded: bool,
    /// With `--serve`, without `--guarded`: answer with the five headers the layer writes,
    /// fixed, and no layer. Against the guarded route, this isolates the layer's own work
    /// from the cost of sending and parsing its headers.
    #[arg(long, conflicts_with = "guarded")]
    static_headers: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: BackendKind,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    urls: Vec<String>,
    concurrency: usize,
    /// Library backends only.
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<u64>,
    /// Library backends only.
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<u64>,
    duration_s: f64,
    checks: u64,
    checks_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    allowed: u64,
    denied: u64,
    errors: u64,
    /// The offered rate of an open-loop run.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    /// Buckets the memory limiter holds at the end (memory backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    tracked_buckets: Option<usize>,
    /// Peak resident memory of this process (Linux `VmHWM`), in KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_rss_kib: Option<u64>,
}

#[derive(Default)]
struct Tally {
    allowed: u64,
    denied: u64,
    errors: u64,
}

/// What one task drives.
#[derive(Clone)]
enum Target {
    Limiter(Arc<dyn RateLimiter>, Arc<Policy>),
    Ping(Arc<RedisLimiter>),
    Http(reqwest::Client, Arc<[String]>, Option<Arc<str>>),
}

enum Outcome {
    Allowed,
    Denied,
    Error,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let durations = (
        Duration::try_from_secs_f64(args.duration),
        Duration::try_from_secs_f64(args.wait),
    );
    let (Ok(duration), Ok(wait)) = durations else {
        eprintln!(
            "limiter-bench: --duration and --wait must be finite numbers of seconds, not negative"
        );
        return ExitCode::from(2);
    };
    if args.backend != BackendKind::Http && !args.urls.is_empty() {
        eprintln!("limiter-bench: --url is for --backend http");
        return ExitCode::from(2);
    }
    if args.concurrency == 0 || duration.is_zero() || args.keys == 0 || args.cost == 0 {
        eprintln!("limiter-bench: --concurrency, --duration, --keys and --cost must be above zero");
        return ExitCode::from(2);
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        eprintln!("limiter-bench: --rate must be a positive number of checks per second");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("limiter-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.serve {
        return match runtime.block_on(serve(addr, args.guarded, args.static_headers)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("limiter-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(&args, duration, wait)) {
        Ok(report) => {
            let text = if args.json {
                serde_json::to_string(&report)
            } else {
                serde_json::to_string_pretty(&report)
            };
            println!("{}", text.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("limiter-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What to drive, and the memory limiter when it is the backend (to count its buckets).
async fn target(args: &Args) -> Result<(Target, Option<Arc<MemoryLimiter>>), String> {
    let policy = || -> Result<Arc<Policy>, String> {
        let mut quota = Quota::per_second(args.limit).map_err(|e| format!("--limit: {e}"))?;
        if let Some(burst) = args.burst {
            quota = quota
                .allow_burst(burst)
                .map_err(|e| format!("--burst: {e}"))?;
        }
        Ok(Arc::new(
            Policy::new("bench", [quota]).map_err(|e| e.to_string())?,
        ))
    };
    let memory = || {
        MemoryLimiter::new(MemoryConfig {
            max_buckets: args.max_buckets,
        })
        .map_err(|e| e.to_string())
    };
    let redis = || -> Result<RedisLimiter, String> {
        let mut config = RedisConfig::from_url(&args.redis_url);
        config.connections = args.connections;
        config.max_batch = args.max_batch;
        RedisLimiter::new(config).map_err(|e| e.to_string())
    };
    let limiter: Arc<dyn RateLimiter> = match args.backend {
        BackendKind::Http => {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(args.concurrency)
                .build()
                .map_err(|e| format!("http client: {e}"))?;
            let key = args.api_key.as_deref().map(Arc::from);
            return Ok((Target::Http(http, args.urls.clone().into(), key), None));
        }
        BackendKind::RedisPing => {
            let redis = redis()?;
            redis.warm_up().await.map_err(|e| format!("redis: {e}"))?;
            return Ok((Target::Ping(Arc::new(redis)), None));
        }
        BackendKind::Memory => {
            let memory = Arc::new(memory()?);
            return Ok((
                Target::Limiter(Arc::clone(&memory) as _, policy()?),
                Some(memory),
            ));
        }
        BackendKind::Redis => {
            let redis = redis()?;
            redis.warm_up().await.map_err(|e| format!("redis: {e}"))?;
            Arc::new(redis)
        }
        BackendKind::Fallback => {
            let redis = redis()?;
            redis.warm_up().await.map_err(|e| format!("redis: {e}"))?;
            let fallback = Fallback::new(redis, memory()?, FallbackConfig::default());
            Arc::new(fallback.map_err(|e| e.to_string())?)
        }
    };
    Ok((Target::Limiter(limiter, policy()?), None))
}

impl Target {
    async fn once(&self, i: u64, keys: u64, cost: u64) -> Outcome {
        match self {
            Target::Limiter(limiter, policy) => {
                let key = ClientKey::from(u128::from(i % keys + 1));
                match limiter.check(&key, policy, cost).await {
                    Ok(d) if d.allowed => Outcome::Allowed,
                    Ok(_) => Outcome::Denied,
                    Err(_) => Outcome::Error,
                }
            }
            Target::Ping(redis) => match redis.ping_once().await {
                Ok(()) => Outcome::Allowed,
                Err(_) => Outcome::Error,
            },
            Target::Http(http, urls, api_key) => {
                // `i % len` is below `len`, a usize.
                let url = &urls[usize::try_from(i % urls.len() as u64).unwrap_or(0)];
                let mut request = http.get(url);
                if let Some(key) = api_key {
                    request = request.header("x-api-key", &**key);
                }
                match request.send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        // Read the body so the connection is reused.
                        match (status, res.bytes().await) {
                            (_, Err(_)) => Outcome::Error,
                            (200..=299, Ok(_)) => Outcome::Allowed,
                            (429, Ok(_)) => Outcome::Denied,
                            _ => Outcome::Error,
                        }
                    }
                    Err(_) => Outcome::Error,
                }
            }
        }
    }
}

async fn run(args: &Args, duration: Duration, wait: Duration) -> Result<Report, String> {
    let (target, memory) = target(args).await?;
    if let Target::Http(http, urls, _) = &target {
        wait_for(http, &urls[0], wait).await?;
    }
    let started = Instant::now();
    let until = started + duration;
    let (keys, cost, step) = (args.keys, args.cost, args.concurrency as u64);
    // Open loop: the pacer hands out one permit per send due.
    let pacer = args.rate.map(|rate| {
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let handed = permits.clone();
        std::thread::spawn(move || pace(rate, started, until, &handed));
        permits
    });
    let mut tasks = Vec::with_capacity(args.concurrency);
    for task in 0..step {
        let target = target.clone();
        let pacer = pacer.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = new_histogram();
            let mut tally = Tally::default();
            let mut i = task;
            while Instant::now() < until {
                if let Some(permits) = &pacer {
                    match permits.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => break, // the run is over
                    }
                }
                let sent = Instant::now();
                let outcome = target.once(i, keys, cost).await;
                i += step;
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(us.max(1));
                match outcome {
                    Outcome::Allowed => tally.allowed += 1,
                    Outcome::Denied => tally.denied += 1,
                    Outcome::Error => tally.errors += 1,
                }
            }
            (latencies, tally)
        }));
    }
    let mut latencies = new_histogram();
    let mut tally = Tally::default();
    for t in tasks {
        let (h, t) = t.await.map_err(|e| format!("a load task failed: {e}"))?;
        latencies.add(&h).map_err(|e| format!("histogram: {e}"))?;
        tally.allowed += t.allowed;
        tally.denied += t.denied;
        tally.errors += t.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let checks = latencies.len();
    let library = !matches!(args.backend, BackendKind::Http | BackendKind::RedisPing);
    Ok(Report {
        backend: args.backend,
        urls: args.urls.clone(),
        concurrency: args.concurrency,
        keys: library.then_some(args.keys),
        cost: library.then_some(args.cost),
        duration_s: elapsed,
        checks,
        #[allow(clippy::cast_precision_loss, reason = "a rate, not a count")]
        checks_per_sec: checks as f64 / elapsed,
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        allowed: tally.allowed,
        denied: tally.denied,
        errors: tally.errors,
        rate: args.rate,
        tracked_buckets: memory.map(|m| m.len()),
        max_rss_kib: max_rss_kib(),
    })
}

/// Releases `rate` permits per second on `permits`, evenly, from `started` until `until`,
/// then closes it. Runs on a thread of its own, waking every 100 µs.
fn pace(rate: f64, started: Instant, until: Instant, permits: &tokio::sync::Semaphore) {
    const TICK: Duration = Duration::from_micros(100);
    let mut released = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive count of sends, far below 2^53"
        )]
        let due = ((now - started).as_secs_f64() * rate) as u64;
        if due > released {
            // `due - released` is what one tick releases: far below usize::MAX.
            permits.add_permits(usize::try_from(due - released).unwrap_or(usize::MAX >> 4));
            released = due;
        }
        std::thread::sleep(TICK);
    }
    permits.close();
}

/// Peak resident set of this process in KiB, from `/proc/self/status` (Linux only).
fn max_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `GET /` answering "ok", behind the rate-limit layer or not: the two sides of the
/// guarded-vs-unguarded comparison. The anonymous tier admits a billion per second, so
/// every request does the whole check and is served.
async fn serve(addr: SocketAddr, guarded: bool, static_headers: bool) -> Result<(), String> {
    use axum::Router;
    use axum::routing::get;

    let mut app = if static_headers {
        // What the guarded route sends for the same quota, as fixed strings.
        Router::new().route(
            "/",
            get(|| async {
                (
                    [
                        ("x-ratelimit-limit", "1000000000"),
                        ("x-ratelimit-remaining", "999999999"),
                        ("x-ratelimit-reset", "1"),
                        ("ratelimit-policy", "\"anonymous\";q=1000000000;w=1"),
                        ("ratelimit", "\"anonymous\";r=999999999;t=1"),
                    ],
                    "ok",
                )
            }),
        )
    } else {
        Router::new().route("/", get(|| async { "ok" }))
    };
    if guarded {
        let mut tiers = TierPolicies::default();
        let quota = Quota::per_second(1_000_000_000).map_err(|e| e.to_string())?;
        tiers
            .set(Tier::Anonymous, [quota])
            .map_err(|e| e.to_string())?;
        let limiter =
            Arc::new(MemoryLimiter::new(MemoryConfig::default()).map_err(|e| e.to_string())?);
        let hasher =
            ClientKeyHasher::new(b"limiter-bench serve secret").map_err(|e| e.to_string())?;
        app = app.layer(limiter_http::RateLimitLayer::new(limiter, hasher).tiers(tiers));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    eprintln!(
        "limiter-bench: serving GET / on {addr} ({})",
        match (guarded, static_headers) {
            (true, _) => "guarded",
            (false, true) => "unguarded, with fixed rate-limit headers",
            (false, false) => "unguarded",
        }
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|e| e.to_string())
}

#[allow(clippy::expect_used, reason = "constant bounds, valid by construction")]
fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Waits until `url` answers at all (any status), so a fleet that is still starting is not
/// counted as errors.
async fn wait_for(http: &reqwest::Client, url: &str, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        match http.get(url).send().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{url} did not answer within {wait:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
