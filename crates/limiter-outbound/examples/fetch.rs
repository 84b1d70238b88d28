//! A polite fetcher: downloads a list of URLs with N concurrent tasks, paced per host and
//! role by a configuration file, as a crawler would; prints one JSON line at the end.
//!
//! ```sh
//! cargo run --release -p limiter-outbound --example fetch -- \
//!     --config crawler.toml [--redis-url redis://127.0.0.1:6379] --concurrency 16 \
//!     [--max-delay 5s] [--in-flight-total 100] [--urls urls.txt] [URL ...]
//! ```
//!
//! Output: `{"sent", "ok", "status_429", "status_other", "errors", "too_long_waits",
//! "elapsed_s"}`: requests sent, answered 2xx, 429, anything else; transport errors;
//! requests not sent because their turn would have come after `max_delay`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use limiter_core::RateLimiter;
use limiter_fallback::{Fallback, FallbackConfig};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_outbound::reqwest_middleware::{ClientBuilder, Error};
use limiter_outbound::{OutboundConfig, OutboundError, OutboundLimit, Pacer};
use limiter_redis::{RedisConfig, RedisLimiter};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Fetch URLs politely, paced per host and role")]
struct Args {
    /// The outbound configuration (TOML, or YAML by extension)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Redis shared by every fetcher; unset: this process's memory alone
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Requests in flight at once
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Overrides `[defaults] max_delay` (over LIMITER_OUTBOUND_DEFAULTS__MAX_DELAY and the file)
    #[arg(long, value_name = "DURATION")]
    max_delay: Option<String>,
    /// Overrides `in_flight_total` (over LIMITER_OUTBOUND_IN_FLIGHT_TOTAL and the file)
    #[arg(long, value_name = "N")]
    in_flight_total: Option<u32>,
    /// A file of URLs, one per line
    #[arg(long, value_name = "FILE")]
    urls: Option<PathBuf>,
    /// URLs to fetch
    #[arg(value_name = "URL")]
    url: Vec<String>,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    status_429: u64,
    status_other: u64,
    errors: u64,
    too_long_waits: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fetch: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Flags over the environment over the file: only the flags given are overrides.
    let mut overrides = serde_json::Map::new();
    if let Some(delay) = &args.max_delay {
        overrides.insert("defaults".into(), json!({ "max_delay": delay }));
    }
    if let Some(total) = args.in_flight_total {
        overrides.insert("in_flight_total".into(), json!(total));
    }
    let config = OutboundConfig::load(args.config.as_deref(), overrides)?;
    let mut urls = args.url;
    if let Some(file) = &args.urls {
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("--urls {}: {e}", file.display()))?;
        urls.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    let memory = Arc::new(MemoryLimiter::new(MemoryConfig::default())?);
    let pacer = match &args.redis_url {
        None => Pacer::new(&config, memory)?,
        Some(url) => {
            let redis = Arc::new(RedisLimiter::new(RedisConfig::from_url(url))?);
            let fallback = Fallback::new(Arc::clone(&redis), memory, FallbackConfig::default())?;
            let limiter: Arc<dyn RateLimiter> = Arc::new(fallback);
            Pacer::with_redis(&config, limiter, redis)?
        }
    };
    let client = ClientBuilder::new(
        limiter_outbound::reqwest_outbound::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    )
    .with(OutboundLimit::new(Arc::new(pacer)))
    .build();

    let started = Instant::now();
    let queue = Arc::new(parking_lot::Mutex::new(urls));
    let tally = Arc::new(parking_lot::Mutex::new(Tally::default()));
    let tasks: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (client, queue, tally) = (client.clone(), Arc::clone(&queue), Arc::clone(&tally));
            tokio::spawn(async move {
                loop {
                    let Some(url) = queue.lock().pop() else {
                        return;
                    };
                    let result = client.get(&url).send().await;
                    let body = match result {
                        Ok(response) => {
                            let status = response.status();
                            // The body is read to its end: a fetcher downloads.
                            let read = response.bytes().await.is_ok();
                            Some((status, read))
                        }
                        Err(e) => {
                            let mut t = tally.lock();
                            match &e {
                                Error::Middleware(m)
                                    if matches!(
                                        m.downcast_ref::<OutboundError>(),
                                        Some(OutboundError::TooLongWait(_))
                                    ) =>
                                {
                                    t.too_long_waits += 1;
                                }
                                _ => {
                                    t.sent += 1;
                                    t.errors += 1;
                                }
                            }
                            None
                        }
                    };
                    if let Some((status, read)) = body {
                        let mut t = tally.lock();
                        t.sent += 1;
                        match status.as_u16() {
                            _ if !read => t.errors += 1,
                            200..=299 => t.ok += 1,
                            429 => t.status_429 += 1,
                            _ => t.status_other += 1,
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let t = tally.lock();
    println!(
        "{}",
        json!({
            "sent": t.sent,
            "ok": t.ok,
            "status_429": t.status_429,
            "status_other": t.status_other,
            "errors": t.errors,
            "too_long_waits": t.too_long_waits,
            "elapsed_s": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
