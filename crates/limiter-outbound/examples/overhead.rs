//! What the outbound middleware costs (docs/performance.md, "Outbound limiting"):
//!
//! 1. per request on the memory backend vs the same client without it, against the same
//!    local server, in alternating rounds: p50 and p99 of each, and the p50 difference;
//! 2. with `--redis-url`, the acquisition latency on Redis when offered 1,000 requests a
//!    second (a turn every millisecond for `--secs`): p50 and p99.
//!
//! ```sh
//! cargo run --release -p limiter-outbound --example overhead -- [--redis-url URL] [--rounds 5] [--secs 10]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use clap::Parser;
use limiter_core::RateLimiter;
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_outbound::reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use limiter_outbound::{OutboundConfig, OutboundLimit, Pacer};
use limiter_redis::{RedisConfig, RedisLimiter};

#[derive(Debug, Parser)]
struct Args {
    /// Redis for the acquisition measurement
    #[arg(long)]
    redis_url: Option<String>,
    /// Rounds of each client, alternating
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Requests per round
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Seconds of paced acquisitions on Redis
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

async fn round(
    client: &ClientWithMiddleware,
    url: &str,
    n: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client.get(url).send().await?.bytes().await?;
        times.push(started.elapsed());
    }
    Ok(times)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("http://{addr}/");
    // Every request admitted: the middleware's own work is measured, not waits.
    let config: OutboundConfig = toml::from_str(&format!(
        "[[hosts]]\nhost = \"{addr}\"\nquotas = [{{ limit = 1000000000, period = \"1s\" }}]\n"
    ))?;
    let memory: Arc<dyn RateLimiter> = Arc::new(MemoryLimiter::new(MemoryConfig::default())?);
    let plain = ClientBuilder::new(limiter_outbound::reqwest_outbound::Client::new()).build();
    let paced = ClientBuilder::new(limiter_outbound::reqwest_outbound::Client::new())
        .with(OutboundLimit::new(Arc::new(Pacer::new(&config, memory)?)))
        .build();
    round(&plain, &url, 500).await?;
    round(&paced, &url, 500).await?;
    let (mut plain_all, mut paced_all) = (Vec::new(), Vec::new());
    let mut diffs = Vec::new();
    for _ in 0..args.rounds {
        let mut a = round(&plain, &url, args.requests).await?;
        let mut b = round(&paced, &url, args.requests).await?;
        a.sort_unstable();
        b.sort_unstable();
        diffs.push(percentile(&b, 0.5).as_secs_f64() - percentile(&a, 0.5).as_secs_f64());
        plain_all.extend(a);
        paced_all.extend(b);
    }
    plain_all.sort_unstable();
    paced_all.sort_unstable();
    diffs.sort_by(f64::total_cmp);
    println!(
        "## Middleware overhead, memory backend ({} rounds of {} sequential requests each)\n",
        args.rounds, args.requests
    );
    println!("| client | p50 | p99 |\n| --- | --- | --- |");
    for (name, t) in [
        ("reqwest alone", &plain_all),
        ("with the middleware", &paced_all),
    ] {
        println!(
            "| {name} | {:.1} µs | {:.1} µs |",
            percentile(t, 0.5).as_secs_f64() * 1e6,
            percentile(t, 0.99).as_secs_f64() * 1e6
        );
    }
    println!(
        "\np50 added, median of the rounds' differences: {:.1} µs\n",
        diffs[diffs.len() / 2] * 1e6
    );

    if let Some(redis_url) = &args.redis_url {
        let redis = Arc::new(RedisLimiter::new(RedisConfig::from_url(redis_url))?);
        let limiter: Arc<dyn RateLimiter> = redis.clone();
        let pacer = Pacer::with_redis(&config, limiter, redis)?;
        let authority = addr.to_string();
        for _ in 0..200 {
            pacer.acquire(&authority, None).await?;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let until = Instant::now() + Duration::from_secs(args.secs);
        let mut times = Vec::new();
        while Instant::now() < until {
            tick.tick().await;
            let started = Instant::now();
            pacer.acquire(&authority, None).await?;
            times.push(started.elapsed());
        }
        times.sort_unstable();
        println!(
            "## Acquisition on Redis, offered 1,000 a second for {} s ({} turns)\n",
            args.secs,
            times.len()
        );
        println!(
            "p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            percentile(&times, 0.5).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e6
        );
    }
    Ok(())
}
