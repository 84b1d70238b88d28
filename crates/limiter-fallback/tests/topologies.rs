//! Failovers under load, on real nodes (redis-server processes started by
//! scripts/redis-topology.sh): a cluster master killed, and a Sentinel-watched master killed.
//! Callers see no error; the fallback answers while the keyspace is unreachable; once a
//! replica is promoted the limiter finds it by itself (no restart) and goes back to Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use limiter_test_support::topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use limiter_core::{Backend, ClientKey, ClientKeyHasher, Policy, Quota, RateLimiter};
use limiter_fallback::{CircuitState, Fallback, FallbackConfig, OutagePolicy};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_redis::{RedisConfig, RedisLimiter, hash_slot};
use topology::Topology as Nodes;

const PROBE: Duration = Duration::from_millis(250);
/// Long enough for every client to spend its burst of 60 at about 125 checks a second.
const SPEND_BURSTS: Duration = Duration::from_millis(1500);

/// One topology at a time: two failovers at once on two cores starve the replicas.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Limiter = Fallback<RedisLimiter, MemoryLimiter>;

async fn fallback(url: &str) -> Arc<Limiter> {
    let redis = RedisLimiter::new(RedisConfig::from_url(url)).unwrap();
    redis.warm_up().await.unwrap();
    let config = FallbackConfig {
        // Six redis-server processes and the load share two cores here: a deadline looser
        // than the default 50 ms keeps a stray slow check from opening a healthy part.
        deadline: Duration::from_millis(250),
        probe_interval: PROBE,
        outage: OutagePolicy::Fallback,
        expected_workers: 1,
        ..FallbackConfig::default()
    };
    Arc::new(
        Fallback::new(
            redis,
            MemoryLimiter::new(MemoryConfig::default()).unwrap(),
            config,
        )
        .unwrap(),
    )
}

fn clients(n: usize, label: &str) -> Arc<Vec<ClientKey>> {
    let hasher = ClientKeyHasher::new(b"failover-test-secret-0123456789").unwrap();
    let pid = std::process::id();
    Arc::new(
        (0..n)
            .map(|i| hasher.hash(format!("{label}-{pid}-{i}")))
            .collect(),
    )
}

/// What a load run saw, per client.
#[derive(Default)]
struct Seen {
    admitted: Vec<AtomicU64>,
    /// Admitted by Redis (the rest by the fallback's memory).
    admitted_redis: Vec<AtomicU64>,
    degraded: Vec<AtomicU64>,
    errors: AtomicU64,
    checks: AtomicU64,
}

/// 16 tasks check `clients` in turn, 2 ms apart each, until `stop`.
fn load(
    limiter: &Arc<Limiter>,
    policy: &Arc<Policy>,
    clients: &Arc<Vec<ClientKey>>,
    stop: &Arc<AtomicBool>,
) -> (Arc<Seen>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Seen {
        admitted: (0..clients.len()).map(|_| AtomicU64::new(0)).collect(),
        admitted_redis: (0..clients.len()).map(|_| AtomicU64::new(0)).collect(),
        degraded: (0..clients.len()).map(|_| AtomicU64::new(0)).collect(),
        ..Seen::default()
    });
    let tasks = (0..16)
        .map(|t| {
            let (limiter, policy, clients) = (limiter.clone(), policy.clone(), clients.clone());
            let (stop, seen) = (stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let c = i % clients.len();
                    i += 16;
                    match limiter.check(&clients[c], &policy, 1).await {
                        Ok(d) => {
                            seen.admitted[c].fetch_add(u64::from(d.allowed), Ordering::Relaxed);
                            let redis = d.allowed && d.backend == Backend::Redis;
                            seen.admitted_redis[c].fetch_add(u64::from(redis), Ordering::Relaxed);
                            seen.degraded[c].fetch_add(u64::from(d.degraded), Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("check failed: {e}");
                            seen.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    seen.checks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    (seen, tasks)
}

/// No client was admitted more than its limit over the run (a burst of 60 and a token a
/// second) plus one more bucket: the fallback's, a burst of 60 and its refill while it
/// answered.
fn assert_at_most_one_extra_bucket(seen: &Seen, run: Duration, outage: Duration) {
    let limit = 60 + run.as_secs() + 1;
    let extra = 60 + outage.as_secs() + 1;
    for (c, n) in seen.admitted.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        let redis = seen.admitted_redis[c].load(Ordering::Relaxed);
        assert!(
            n <= limit + extra,
            "client {c} admitted {n} ({redis} by Redis) in {run:?} with {outage:?} of outage: \
             above the limit {limit} plus one bucket {extra}"
        );
    }
}

/// Stops the load, and checks that no caller saw an error; returns how long it ran.
async fn stop_load(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seen: &Seen,
    started: Instant,
) -> Duration {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        seen.errors.load(Ordering::Relaxed),
        0,
        "no caller sees the failover"
    );
    started.elapsed()
}

/// Waits until every client is back on Redis, and reports how long after the promotion.
async fn back_on_redis(limiter: &Limiter, killed: Instant, promoted: Instant) -> Instant {
    let closed = wait_for("the circuit closed", Duration::from_secs(10), || {
        limiter.stats().state == CircuitState::Closed
    })
    .await;
    eprintln!(
        "promoted {:?} after the kill; back on Redis {:?} after the promotion",
        promoted - killed,
        closed.saturating_duration_since(promoted)
    );
    closed
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        // `done` may run redis-cli: a blocking call, kept off the load's worker threads.
        if tokio::task::block_in_place(&mut done) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_under_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::cluster(17200);
    let limiter = fallback(&nodes.url).await;
    // 60 a minute: a burst of 60, a token a second.
    let policy = Arc::new(Policy::new("failover", [Quota::per_minute(60).unwrap()]).unwrap());
    let clients = clients(48, "cluster-failover");

    // The victim: the first master, its slots, and its replica.
    let cluster_nodes = nodes.cli(nodes.ports[1], &["cluster", "nodes"]);
    let line_of = |port: u16| {
        cluster_nodes
            .lines()
            .find(|l| l.contains(&format!(":{port}@")))
            .unwrap()
            .to_owned()
    };
    let victim = nodes.ports[0];
    let victim_line = line_of(victim);
    let victim_id = victim_line.split_whitespace().next().unwrap().to_owned();
    let ranges: Vec<(u16, u16)> = victim_line
        .split_whitespace()
        .skip(8)
        .map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (r.parse().unwrap(), r.parse().unwrap()),
        })
        .collect();
    let replica = nodes.ports[3..]
        .iter()
        .copied()
        .find(|&p| line_of(p).contains(&format!("slave {victim_id}")))
        .expect("the victim's replica");
    let affected: Vec<bool> = clients
        .iter()
        .map(|c| ranges.iter().any(|&(a, b)| (a..=b).contains(&hash_slot(c))))
        .collect();
    assert!(affected.iter().any(|&a| a) && affected.iter().any(|&a| !a));

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (seen, tasks) = load(&limiter, &policy, &clients, &stop);
    // Kill once the bursts are spent: from then on a client's bucket is written about once
    // a second, so the replica is at most a token behind. (A kill while every client is
    // spending its burst loses whatever the replica had not received yet: Redis replicates
    // asynchronously; see docs/operations.md.)
    tokio::time::sleep(SPEND_BURSTS).await;

    nodes.kill(victim);
    let killed = Instant::now();
    let victim_slots: u64 = ranges.iter().map(|&(a, b)| u64::from(b - a) + 1).sum();
    let (mut max_open, mut saw_partial) = (0, false);
    let promoted = wait_for("the replica promoted", Duration::from_secs(15), || {
        let stats = limiter.stats();
        max_open = max_open.max(stats.open_partitions);
        saw_partial |= stats.state == CircuitState::Partial;
        let line = nodes
            .cli(nodes.ports[1], &["cluster", "nodes"])
            .lines()
            .find(|l| l.contains(&format!(":{replica}@")))
            .map(str::to_owned)
            .unwrap_or_default();
        line.contains("master") && !line.contains("fail")
    })
    .await;
    let closed = back_on_redis(&limiter, killed, promoted).await;
    // Back on Redis: every client, affected or not, is answered by Redis again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in clients.iter() {
        let d = limiter.check(c, &policy, 1).await.unwrap();
        assert_eq!(d.backend, Backend::Redis, "{c} back on Redis");
        assert!(!d.degraded);
    }
    let elapsed = stop_load(&stop, tasks, &seen, started).await;
    assert!(
        saw_partial,
        "the state said part of the keyspace was on the fallback"
    );
    // Every one of the dead master's slots, and no other but the odd stray one: a healthy
    // slot whose check missed even the 250 ms deadline while six servers and the load share
    // two cores opens on its own (seen once in several CI runs: 5462 for 5461), which is the
    // fallback doing its job; a healthy master's share (another 5461) never opens.
    assert!(
        (victim_slots..=victim_slots + 3).contains(&max_open),
        "the dead master's slots, and no healthy master's, were on the fallback: {max_open} open for {victim_slots}"
    );
    assert!(
        closed.saturating_duration_since(promoted) <= 2 * PROBE,
        "back on Redis within two probe intervals of the promotion"
    );
    let degraded: u64 = seen
        .degraded
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .sum();
    assert!(degraded > 0, "the fallback answered during the outage");
    assert_at_most_one_extra_bucket(&seen, elapsed, closed - killed);
    // Clients on the healthy masters stayed on Redis: none exceeded its limit, and at most
    // a stray decision or two came from the fallback (a check that missed the deadline while
    // the cluster client refreshed its slot map on this loaded 2-core machine), against
    // hundreds for the dead master's clients.
    let limit = 60 + elapsed.as_secs() + 1;
    let mut per_kind: HashMap<bool, u64> = HashMap::new();
    let mut degraded_per_kind: HashMap<bool, u64> = HashMap::new();
    for (c, n) in seen.admitted.iter().enumerate() {
        let (n, degraded) = (
            n.load(Ordering::Relaxed),
            seen.degraded[c].load(Ordering::Relaxed),
        );
        *per_kind.entry(affected[c]).or_default() += n;
        *degraded_per_kind.entry(affected[c]).or_default() += degraded;
        if affected[c] {
            assert!(
                degraded > 0,
                "client {c} of the dead master was served by the fallback"
            );
        } else {
            let redis = seen.admitted_redis[c].load(Ordering::Relaxed);
            assert!(
                redis <= limit,
                "client {c} of a healthy master: Redis admitted {redis}"
            );
        }
    }
    let (healthy, dead) = (degraded_per_kind[&false], degraded_per_kind[&true]);
    eprintln!("degraded decisions: {dead} for the dead master's clients, {healthy} for the others");
    assert!(
        healthy * 50 < dead,
        "healthy masters' clients degraded {healthy} times, the dead master's {dead}"
    );
    eprintln!(
        "admitted per kind (affected?): {per_kind:?}; checks {}",
        seen.checks.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::sentinel(17300);
    let limiter = fallback(&nodes.url).await;
    let policy = Arc::new(Policy::new("sentinel", [Quota::per_minute(60).unwrap()]).unwrap());
    let clients = clients(32, "sentinel-failover");
    let (master, replica) = (nodes.ports[0], nodes.ports[1]);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (seen, tasks) = load(&limiter, &policy, &clients, &stop);
    // Kill once the bursts are spent: from then on a client's bucket is written about once
    // a second, so the replica is at most a token behind. (A kill while every client is
    // spending its burst loses whatever the replica had not received yet: Redis replicates
    // asynchronously; see docs/operations.md.)
    tokio::time::sleep(SPEND_BURSTS).await;
    let before = limiter.check(&clients[0], &policy, 1).await.unwrap();
    assert_eq!(before.backend, Backend::Redis);

    nodes.kill(master);
    let killed = Instant::now();
    let sentinel = nodes.ports[0] + 10;
    let promoted = wait_for(
        "the sentinels promote the replica",
        Duration::from_secs(20),
        || {
            nodes
                .cli(
                    sentinel,
                    &["sentinel", "get-master-addr-by-name", "limiter"],
                )
                .contains(&replica.to_string())
        },
    )
    .await;
    let closed = back_on_redis(&limiter, killed, promoted).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let elapsed = stop_load(&stop, tasks, &seen, started).await;
    let degraded: u64 = seen
        .degraded
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .sum();
    assert!(
        degraded > 0,
        "the fallback answered while no master was known"
    );
    // The new master serves the limiter, found without a restart: the buckets are there.
    let d = limiter.check(&clients[0], &policy, 1).await.unwrap();
    assert_eq!(d.backend, Backend::Redis);
    assert!(!d.degraded);
    let key = RedisLimiter::bucket_keys(&clients[0], &policy).remove(0);
    assert_eq!(
        nodes.cli(replica, &["exists", &key]).trim(),
        "1",
        "written on the new master"
    );
    assert_at_most_one_extra_bucket(&seen, elapsed, closed - killed);
}
