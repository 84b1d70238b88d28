//! Faults injected into a real Redis container while 64 tasks check continuously: stopped
//! and started, paused, cut off by the firewall, restarted. For each: no error reaches a
//! caller, no check waits much past the deadline, the circuit opens within a deadline and
//! closes within two probe intervals of Redis answering again, and during the outage the
//! worker keeps to its share of the limit.
//!
//! Needs Docker (see `scripts/images.sh`) and, for the cut-off, root and `iptables`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use limiter_core::{Backend, ClientKeyHasher, Policy, Quota, RateLimiter};
use limiter_fallback::{CircuitState, Fallback, FallbackConfig};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_redis::{RedisConfig, RedisLimiter};
use limiter_test_support::{HELP, TestRedis};
use testcontainers::ContainerAsync;
use testcontainers_modules::redis::Redis;
const DEADLINE: Duration = Duration::from_millis(50);
const PROBE: Duration = Duration::from_millis(250);
/// How far past the deadline a check may return: the bound. Measured here over
/// repeated runs, the slowest check was 2.2 ms past it.
const LATENCY_SLACK: Duration = Duration::from_millis(10);
/// What Docker and scheduling may add to the circuit's own transitions.
const SLACK: Duration = Duration::from_millis(40);
const TASKS: usize = 64;

/// One fault scenario at a time: 64 tasks per scenario already fill both cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Target {
    redis: TestRedis,
    port: u16,
}

impl Target {
    /// A container on a fixed host port, so the address survives a stop and start.
    async fn start() -> Self {
        let redis = TestRedis::container_on_fixed_port().await;
        let port = redis
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap();
        Self { redis, port }
    }

    fn url(&self) -> String {
        self.redis.url.clone()
    }

    fn container(&self) -> &ContainerAsync<Redis> {
        self.redis.container_handle()
    }

    fn docker(&self, args: &[&str]) {
        let out = Command::new("docker")
            .args(args)
            .arg(self.container().id())
            .output()
            .unwrap_or_else(|e| panic!("docker: {e}; {HELP}"));
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until Redis answers PING on a fresh connection; returns when it did.
    async fn until_ready(&self) -> Instant {
        self.redis.until_ready().await
    }
}

/// Drops loopback packets to the container's host port while alive.
struct Firewall {
    rule: Vec<String>,
}

impl Firewall {
    fn cut(port: u16) -> Self {
        let rule: Vec<String> = ["OUTPUT", "-p", "tcp", "-m", "conntrack", "--ctorigdstport"]
            .into_iter()
            .map(String::from)
            .chain([port.to_string(), "-j".into(), "DROP".into()])
            .collect();
        let out = Command::new("iptables")
            .arg("-I")
            .args(&rule)
            .output()
            .unwrap_or_else(|e| panic!("iptables: {e}; the cut-off test needs root and iptables (apt-get install iptables)"));
        assert!(
            out.status.success(),
            "iptables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { rule }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.rule).output();
    }
}

#[derive(Default)]
struct Record {
    errors: Vec<String>,
    slowest: Duration,
    /// (admitted, degraded) for the hot client.
    hot: Vec<(bool, bool)>,
    redis_after_heal: bool,
}

async fn scenario(
    name: &str,
    fault: impl AsyncFnOnce(&Target) -> Option<Firewall>,
    heal: impl AsyncFnOnce(&Target, Option<Firewall>),
) {
    let _serial = SERIAL.lock().await;
    let target = Target::start().await;
    let redis_limiter = RedisLimiter::new(RedisConfig::from_url(target.url())).unwrap();
    redis_limiter.warm_up().await.unwrap();
    let fallback = Arc::new(
        Fallback::new(
            redis_limiter,
            MemoryLimiter::new(MemoryConfig {
                max_buckets: 10_000,
            })
            .unwrap(),
            FallbackConfig {
                deadline: DEADLINE,
                probe_interval: PROBE,
                expected_workers: 2,
                ..FallbackConfig::default()
            },
        )
        .unwrap(),
    );
    // The hot client: 20 per second with a burst of 200; this worker's share is half.
    let policy = Arc::new(
        Policy::new(
            "faults",
            [Quota::per_second(20).unwrap().allow_burst(200).unwrap()],
        )
        .unwrap(),
    );
    let hasher = ClientKeyHasher::new(b"fault-test-secret-0123456789").unwrap();
    let hot = hasher.hash(format!("hot-{name}"));
    let stop = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (fallback, policy, stop, healed) = (
                fallback.clone(),
                policy.clone(),
                stop.clone(),
                healed.clone(),
            );
            let key = if t % 2 == 0 {
                hot
            } else {
                hasher.hash(format!("cold-{name}-{t}"))
            };
            tokio::spawn(async move {
                let mut rec = Record::default();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = fallback.check(&key, &policy, 1).await;
                    rec.slowest = rec.slowest.max(started.elapsed());
                    match result {
                        Ok(d) => {
                            if key == hot {
                                rec.hot.push((d.allowed, d.degraded));
                            }
                            if healed.load(Ordering::Relaxed) && d.backend == Backend::Redis {
                                rec.redis_after_heal = true;
                            }
                        }
                        Err(e) => rec.errors.push(e.to_string()),
                    }
                    // Continuous, but leave the two cores room for Docker and the server.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                rec
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fallback.state(),
        CircuitState::Closed,
        "{name}: not on Redis before the fault"
    );

    let before_fault = Instant::now();
    let firewall = fault(&target).await;
    let faulted = Instant::now();
    while fallback.state() == CircuitState::Closed {
        assert!(
            faulted.elapsed() < Duration::from_secs(5),
            "{name}: the circuit never opened"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let open_after = faulted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    heal(&target, firewall).await;
    let ready = target.until_ready().await;
    while fallback.state() != CircuitState::Closed {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "{name}: the circuit never closed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let closed_after = ready.elapsed();
    let outage = before_fault.elapsed();
    healed.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Record::default();
    for t in tasks {
        let rec = t.await.unwrap();
        all.errors.extend(rec.errors);
        all.slowest = all.slowest.max(rec.slowest);
        all.hot.extend(rec.hot);
        all.redis_after_heal |= rec.redis_after_heal;
    }
    let local_admitted = all
        .hot
        .iter()
        .filter(|(allowed, degraded)| *allowed && *degraded)
        .count();
    let stats = fallback.stats();
    eprintln!(
        "{name}: opened {open_after:?} after the fault, closed {closed_after:?} after Redis answered, \
         slowest check {:?}, hot client admitted locally {local_admitted} over {outage:?}, {stats:?}",
        all.slowest
    );

    assert!(
        all.errors.is_empty(),
        "{name}: errors reached callers: {:?}",
        &all.errors[..all.errors.len().min(5)]
    );
    assert!(
        all.slowest <= DEADLINE + LATENCY_SLACK,
        "{name}: a check took {:?}",
        all.slowest
    );
    assert!(
        open_after <= DEADLINE + SLACK,
        "{name}: opened {open_after:?} after the fault"
    );
    assert!(
        closed_after <= 2 * PROBE + SLACK,
        "{name}: closed {closed_after:?} after Redis answered"
    );
    assert_eq!(
        stats.opened, 1,
        "{name}: the circuit opened more than once (flapping)"
    );
    assert!(
        all.redis_after_heal,
        "{name}: no decision came from Redis after healing"
    );
    // Locally, this worker may admit its share's burst (100) plus its refill (10/s) over
    // the outage, counted from before the fault to the circuit closing, and no more.
    let share_bound = 100 + (10.0 * outage.as_secs_f64()).floor() as usize;
    assert!(
        local_admitted <= share_bound,
        "{name}: {local_admitted} admitted locally over {outage:?}, above the share's {share_bound}"
    );
    assert!(
        local_admitted >= 100,
        "{name}: only {local_admitted} admitted locally: was the fallback used?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_started() {
    scenario(
        "stop",
        async |t| {
            t.container().stop().await.unwrap();
            None
        },
        async |t, _| t.container().start().await.unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_then_resumed() {
    scenario(
        "pause",
        async |t| {
            t.container().pause().await.unwrap();
            None
        },
        async |t, _| t.container().unpause().await.unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cut_off_then_reconnected() {
    scenario(
        "cut",
        async |t| Some(Firewall::cut(t.port)),
        async |_, firewall| drop(firewall),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_losing_scripts_and_keys() {
    scenario(
        "restart",
        async |t| {
            t.docker(&["kill"]);
            None
        },
        async |t, _| t.docker(&["start"]),
    )
    .await;
}
