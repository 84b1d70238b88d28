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

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    /// HTTP requests to `--url`: 2xx is allowed, 429 denied, anything else an error.
    Http,
}

#[derive(Debug, Parser)]
#[command(name = "limiter-bench", version, about)]
struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value = "http")]
    backend: BackendKind,
    /// URL to request (repeat to spread requests over several workers).
    #[arg(long = "url", value_name = "URL", required = true)]
    urls: Vec<String>,
    /// Sent as `X-API-Key` on every request.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Requests in flight at once, each waiting for its answer before the next.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to wait for the first URL to answer before starting.
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
    /// Print the result as one JSON line (the default prints it pretty).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: BackendKind,
    urls: Vec<String>,
    concurrency: usize,
    duration_s: f64,
    checks: u64,
    checks_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    allowed: u64,
    denied: u64,
    errors: u64,
}

#[derive(Default)]
struct Tally {
    allowed: u64,
    denied: u64,
    errors: u64,
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
    if args.concurrency == 0 || duration.is_zero() {
        eprintln!("limiter-bench: --concurrency and --duration must be above zero");
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

async fn run(args: &Args, duration: Duration, wait: Duration) -> Result<Report, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    wait_for(&http, &args.urls[0], wait).await?;

    let urls: Arc<[String]> = args.urls.clone().into();
    let api_key: Option<Arc<str>> = args.api_key.as_deref().map(Arc::from);
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = Vec::with_capacity(args.concurrency);
    for task in 0..args.concurrency {
        let (http, urls, api_key) = (http.clone(), urls.clone(), api_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = new_histogram();
            let mut tally = Tally::default();
            let mut i = task;
            while Instant::now() < until {
                let mut request = http.get(&urls[i % urls.len()]);
                if let Some(key) = &api_key {
                    request = request.header("x-api-key", &**key);
                }
                i += 1;
                let sent = Instant::now();
                let outcome = match request.send().await {
                    Ok(res) => {
                        let status = res.status();
                        // Read the body so the connection is reused.
                        let body = res.bytes().await;
                        match (status.as_u16(), body) {
                            (_, Err(_)) => &mut tally.errors,
                            (200..=299, Ok(_)) => &mut tally.allowed,
                            (429, Ok(_)) => &mut tally.denied,
                            _ => &mut tally.errors,
                        }
                    }
                    Err(_) => &mut tally.errors,
                };
                *outcome += 1;
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(us.max(1));
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
    Ok(Report {
        backend: args.backend,
        urls: args.urls.clone(),
        concurrency: args.concurrency,
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
    })
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
