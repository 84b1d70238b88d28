//! A run: the load tasks, their tally, and the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use limiter_redis::{Topology, redis};

use crate::args::{Args, BackendKind};
use crate::script_cpu::ScriptCpu;
use crate::target::{Outcome, Target, target};

#[derive(Debug, Serialize)]
pub(crate) struct Report {
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
    /// Redis CPU per decision in µs: the time Redis spent running the script over the run
    /// (`INFO commandstats`, `EVALSHA` and `EVAL`) divided by the checks (redis and fallback
    /// backends on one Redis; other clients' script calls in the same Redis count too).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_us_per_check: Option<f64>,
    /// Checks per script call over the run, as batched.
    #[serde(skip_serializing_if = "Option::is_none")]
    checks_per_call: Option<f64>,
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

pub(crate) async fn run(args: &Args, duration: Duration, wait: Duration) -> Result<Report, String> {
    let (target, memory) = target(args).await?;
    let mut stats = script_stats(args).await?;
    let before = match &mut stats {
        Some(conn) => Some(ScriptCpu::read(conn).await?),
        None => None,
    };
    if let Target::Http(http, urls, _) = &target {
        wait_for(http, &urls[0], wait).await?;
    }
    let started = Instant::now();
    let until = started + duration;
    // Open loop: the pacer hands out one permit per send due.
    let pacer = args.rate.map(|rate| {
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let handed = permits.clone();
        std::thread::spawn(move || pace(rate, started, until, &handed));
        permits
    });
    let load = Load {
        keys: args.keys,
        cost: args.cost,
        step: args.concurrency as u64,
        until,
    };
    let tasks: Vec<_> = (0..load.step)
        .map(|task| tokio::spawn(load.drive(target.clone(), task, pacer.clone())))
        .collect();
    let mut latencies = new_histogram();
    let mut tally = Tally::default();
    for t in tasks {
        let (h, t) = t.await.map_err(|e| format!("a load task failed: {e}"))?;
        latencies.add(&h).map_err(|e| format!("histogram: {e}"))?;
        tally.add(&t);
    }
    let elapsed = started.elapsed();
    let mut report = Report::new(args, elapsed, &latencies, &tally, memory.map(|m| m.len()));
    if let (Some(conn), Some(before)) = (&mut stats, before) {
        let after = ScriptCpu::read(conn).await?;
        if let Some((us, per_call)) = after.per_check(before, report.checks) {
            report.redis_us_per_check = Some(us);
            report.checks_per_call = Some(per_call);
        }
    }
    Ok(report)
}

/// A connection of its own to the Redis the checks go to, for its script statistics: for
/// the redis and fallback backends on one Redis (a cluster's are spread over its masters).
async fn script_stats(args: &Args) -> Result<Option<redis::aio::MultiplexedConnection>, String> {
    if !matches!(args.backend, BackendKind::Redis | BackendKind::Fallback)
        || Topology::of(&args.redis_url) != Topology::Single
    {
        return Ok(None);
    }
    let client = redis::Client::open(args.redis_url.as_str()).map_err(|e| format!("redis: {e}"))?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis: {e}"))?;
    Ok(Some(conn))
}

/// What every load task shares.
#[derive(Clone, Copy)]
struct Load {
    keys: u64,
    cost: u64,
    step: u64,
    until: Instant,
}

impl Load {
    /// One task: checks back to back (or as the pacer allows) until the run is over.
    async fn drive(
        self,
        target: Target,
        task: u64,
        pacer: Option<Arc<tokio::sync::Semaphore>>,
    ) -> (Histogram<u64>, Tally) {
        let mut latencies = new_histogram();
        let mut tally = Tally::default();
        let mut i = task;
        while Instant::now() < self.until {
            if let Some(permits) = &pacer {
                match permits.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break, // the run is over
                }
            }
            let sent = Instant::now();
            let outcome = target.once(i, self.keys, self.cost).await;
            i += self.step;
            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            latencies.saturating_record(us.max(1));
            match outcome {
                Outcome::Allowed => tally.allowed += 1,
                Outcome::Denied => tally.denied += 1,
                Outcome::Error => tally.errors += 1,
            }
        }
        (latencies, tally)
    }
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.errors += other.errors;
    }
}

impl Report {
    fn new(
        args: &Args,
        elapsed: Duration,
        latencies: &Histogram<u64>,
        tally: &Tally,
        tracked_buckets: Option<usize>,
    ) -> Self {
        let elapsed = elapsed.as_secs_f64();
        let checks = latencies.len();
        let library = !matches!(args.backend, BackendKind::Http | BackendKind::RedisPing);
        Report {
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
            tracked_buckets,
            redis_us_per_check: None,
            checks_per_call: None,
            max_rss_kib: max_rss_kib(),
        }
    }
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
