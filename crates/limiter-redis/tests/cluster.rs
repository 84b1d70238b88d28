//! The Redis backend on a real Redis Cluster (3 masters, 1 replica each, redis-server
//! processes started by scripts/redis-topology.sh): the cross-worker accuracy of a single
//! Redis, clients spread over every master, one EVALSHA per check and never a CROSSSLOT;
//! the script loaded wherever it is missing; slots moved under load without an error.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod support;

use limiter_test_support::topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use limiter_core::{ClientKey, ClientKeyHasher, Policy, Quota, RateLimiter};
use limiter_redis::{RedisConfig, RedisLimiter, Topology, hash_slot};
use topology::Topology as Nodes;

/// One cluster at a time: three clusters of six nodes at once on two cores can miss
/// `cluster-node-timeout` and fail a healthy master over in the middle of a test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn clients(n: usize, label: &str) -> Vec<ClientKey> {
    let hasher = ClientKeyHasher::new(b"cluster-test-secret-0123456789").unwrap();
    (0..n)
        .map(|i| hasher.hash(format!("{}-{i}", support::unique_id(label))))
        .collect()
}

fn limiter(url: &str) -> RedisLimiter {
    let limiter = RedisLimiter::new(RedisConfig::from_url(url)).unwrap();
    assert_eq!(Topology::of(url), Topology::Cluster);
    limiter
}

/// Three workers × 16 tasks check 60 clients under a two-quota policy (two keys per
/// check): every client is admitted exactly its burst, the keys land on all three masters
/// in the slots Redis computes, and no check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_a_cluster_admit_exactly_the_limit_on_every_master() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::cluster(17100);
    let policy = Arc::new(
        Policy::new(
            "clustered",
            [Quota::per_hour(10).unwrap(), Quota::per_day(1000).unwrap()],
        )
        .unwrap(),
    );
    let clients = Arc::new(clients(60, "spread"));
    let workers: Vec<_> = (0..3).map(|_| Arc::new(limiter(&nodes.url))).collect();
    for w in &workers {
        w.warm_up().await.unwrap();
    }

    let admitted: Arc<Vec<AtomicU64>> = Arc::new((0..60).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (w, worker) in workers.iter().enumerate() {
        for t in 0..16 {
            let (worker, policy, clients) = (worker.clone(), policy.clone(), clients.clone());
            let (admitted, errors) = (admitted.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                // 30 rounds over every client, each task from its own offset.
                for round in 0..30 {
                    for i in 0..clients.len() {
                        let c = (i + w * 16 + t + round) % clients.len();
                        match worker.check(&clients[c], &policy, 1).await {
                            Ok(d) if d.allowed => {
                                admitted[c].fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                eprintln!("check failed: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no check may fail (CROSSSLOT, MOVED…)"
    );
    for (c, n) in admitted.iter().enumerate() {
        assert_eq!(
            n.load(Ordering::Relaxed),
            10,
            "client {c}: exactly the hourly burst"
        );
    }

    // Where the keys are: each client's two keys on the master owning its slot, which is
    // the slot Redis computes for them; and every master holds some.
    let masters = nodes.masters(nodes.ports[0]);
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    let mut per_master = std::collections::HashMap::new();
    for client in clients.iter() {
        let keys = RedisLimiter::bucket_keys(client, &policy);
        let slot = hash_slot(client);
        for key in &keys {
            let redis_slot: u16 = nodes
                .cli(nodes.ports[0], &["cluster", "keyslot", key])
                .trim()
                .parse()
                .unwrap();
            assert_eq!(redis_slot, slot, "{key}");
        }
        let owner = masters
            .iter()
            .map(|(port, _)| *port)
            .find(|&port| nodes.cli(port, &["exists", &keys[0], &keys[1]]).trim() == "2")
            .unwrap_or_else(|| panic!("no master holds both keys of {client}"));
        *per_master.entry(owner).or_insert(0) += 1;
    }
    assert_eq!(
        per_master.len(),
        3,
        "clients spread over every master: {per_master:?}"
    );
}

/// A master that lost its scripts (a restart, a promoted replica that never had them, a
/// SCRIPT FLUSH) runs the next check anyway, with no error to the caller: the check is
/// sent again as EVAL, to that master alone, even with another node down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_the_script_gets_it_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::cluster(17120);
    let limiter = limiter(&nodes.url);
    let policy = Policy::new("noscript", [Quota::per_hour(100).unwrap()]).unwrap();
    let clients = clients(30, "noscript");
    for c in &clients {
        assert!(limiter.check(c, &policy, 1).await.unwrap().allowed);
    }
    for port in &nodes.ports {
        assert_eq!(nodes.cli(*port, &["script", "flush"]).trim(), "OK");
    }
    // One replica down: loading the script on every node would now fail.
    nodes.kill(nodes.ports[5]);
    for c in &clients {
        let d = limiter.check(c, &policy, 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!(
            d.remaining, 98,
            "the bucket was kept: only the script was lost"
        );
    }
}

/// Slots move from one master to another (`redis-cli --cluster rebalance`, keys migrated
/// with MIGRATE while clients check) under load: MOVED and ASK are followed, no check
/// fails, and no client is admitted more than its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_costs_no_error() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nodes = Nodes::cluster(17140);
    let limiter = Arc::new(limiter(&nodes.url));
    limiter.warm_up().await.unwrap();
    let policy = Arc::new(Policy::new("reshard", [Quota::per_hour(50).unwrap()]).unwrap());
    let clients = Arc::new(clients(200, "reshard"));
    let stop = Arc::new(AtomicBool::new(false));
    let admitted: Arc<Vec<AtomicU64>> = Arc::new((0..200).map(|_| AtomicU64::new(0)).collect());
    let (checks, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (limiter, policy, clients, stop) = (
            limiter.clone(),
            policy.clone(),
            clients.clone(),
            stop.clone(),
        );
        let (admitted, checks, errors) = (admitted.clone(), checks.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let c = i % clients.len();
                i += 7;
                match limiter.check(&clients[c], &policy, 1).await {
                    Ok(d) => {
                        admitted[c].fetch_add(u64::from(d.allowed), Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("check failed during resharding: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                checks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Move 1000 slots from the first master to the second, keys and all.
    let masters = nodes.masters(nodes.ports[0]);
    let ids = nodes.cli(nodes.ports[0], &["cluster", "nodes"]);
    let id_of = |port: u16| {
        ids.lines()
            .find(|l| l.contains(&format!(":{port}@")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_owned()
    };
    let (from, to) = (id_of(masters[0].0), id_of(masters[1].0));
    let before = checks.load(Ordering::Relaxed);
    let started = Instant::now();
    let out = tokio::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", nodes.ports[0]),
        ])
        .args([
            "--cluster-from",
            &from,
            "--cluster-to",
            &to,
            "--cluster-slots",
            "1000",
        ])
        .args(["--cluster-yes", "--cluster-pipeline", "10"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "reshard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = checks.load(Ordering::Relaxed) - before;
    eprintln!(
        "resharding took {:?}, {during} checks meanwhile",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let after = nodes.masters(nodes.ports[0]);
    let slots_of = |port: u16, list: &[(u16, usize)]| list.iter().find(|m| m.0 == port).unwrap().1;
    assert_eq!(
        slots_of(masters[0].0, &after),
        slots_of(masters[0].0, &masters) - 1000,
        "slots moved"
    );
    assert!(during > 100, "checks ran during the resharding: {during}");
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no check may fail while slots move"
    );
    for (c, n) in admitted.iter().enumerate() {
        assert!(
            n.load(Ordering::Relaxed) <= 50,
            "client {c} admitted above its limit"
        );
    }
}
