//! Concurrent checks share script calls, and sharing changes no decision: each check is
//! answered as if it had been sent alone, a broken key fails only its own check, and a check
//! whose caller gave up before its batch left is never sent.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
use limiter_redis::{RedisConfig, RedisLimiter, redis};

const TASKS: u128 = 128;
const CHECKS_PER_TASK: u64 = 20;

/// A quota that does not refill while a test runs: remaining counts are exact.
fn policy(name: &str) -> Arc<Policy> {
    Arc::new(Policy::new(name, [Quota::per_day(1_000).unwrap()]).unwrap())
}

/// Script calls (`EVALSHA` and `EVAL`) Redis has run since its statistics were reset.
async fn script_calls(redis_server: &support::TestRedis) -> u64 {
    redis_server
        .command_calls()
        .await
        .iter()
        .filter(|(name, _)| name == "evalsha" || name == "eval")
        .map(|(_, calls)| calls)
        .sum()
}

async fn reset_stats(redis_server: &support::TestRedis) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut redis_server.raw().await)
        .await
        .unwrap();
}

/// `TASKS` tasks, each checking its own client `CHECKS_PER_TASK` times in a row; every
/// answer must count down from the capacity by exactly one.
async fn run_tasks(limiter: Arc<RedisLimiter>, policy: Arc<Policy>, first_client: u128) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move {
                let client = ClientKey::from(first_client + t);
                for k in 1..=CHECKS_PER_TASK {
                    let decision = limiter.check(&client, &policy, 1).await.unwrap();
                    assert!(decision.allowed);
                    assert_eq!(decision.remaining, 1_000 - k, "client {t}, check {k}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_share_script_calls_and_decide_the_same() {
    // Its own container: the call counts must not include other tests' checks.
    let redis_server = support::TestRedis::container().await;
    let checks = (TASKS as u64) * CHECKS_PER_TASK;

    let batched = Arc::new(redis_server.limiter());
    assert!(batched.config().max_batch > 1, "batching is the default");
    batched.warm_up().await.unwrap();
    reset_stats(&redis_server).await;
    run_tasks(batched, policy("batched"), 0).await;
    let calls = script_calls(&redis_server).await;
    assert!(
        calls <= checks / 2,
        "{checks} concurrent checks took {calls} script calls: they were not batched"
    );

    let mut config = RedisConfig::from_url(&redis_server.url);
    config.max_batch = 1;
    let unbatched = Arc::new(RedisLimiter::new(config).unwrap());
    unbatched.warm_up().await.unwrap();
    reset_stats(&redis_server).await;
    run_tasks(unbatched, policy("unbatched"), 0).await;
    assert_eq!(
        script_calls(&redis_server).await,
        checks,
        "max_batch = 1 sends each check on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_several_policies_share_calls_and_decide_the_same() {
    // A call sends each policy's quotas once and each check names its policy: checks of a
    // one-quota policy, of a two-quota one, and of a third policy with the first's quotas
    // under another name, all in the same calls, each decided as if alone.
    let redis_server = support::TestRedis::container().await;
    let limiter = Arc::new(redis_server.limiter());
    limiter.warm_up().await.unwrap();
    let day = Quota::per_day(1_000).unwrap();
    let policies = [
        Arc::new(Policy::new("one", [day]).unwrap()),
        Arc::new(Policy::new("two", [Quota::per_hour(2_000).unwrap(), day]).unwrap()),
        Arc::new(Policy::new("same", [day]).unwrap()),
    ];
    reset_stats(&redis_server).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let limiter = limiter.clone();
            let policy = policies[t as usize % policies.len()].clone();
            tokio::spawn(async move {
                let client = ClientKey::from(t);
                for k in 1..=CHECKS_PER_TASK {
                    let decision = limiter.check(&client, &policy, 1).await.unwrap();
                    assert!(decision.allowed);
                    // The day's bucket has the fewest tokens left in every policy.
                    assert_eq!(decision.remaining, 1_000 - k, "client {t}, check {k}");
                    assert_eq!(decision.limit, 1_000);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let checks = (TASKS as u64) * CHECKS_PER_TASK;
    let calls = script_calls(&redis_server).await;
    assert!(
        calls <= checks / 2,
        "{checks} concurrent checks took {calls} script calls: they were not batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_a_bucket_fails_only_its_own_check() {
    let redis_server = support::TestRedis::container().await;
    let limiter = Arc::new(redis_server.limiter());
    let policy = policy("junk");
    // Two clients whose keys hold something else: a string, which the script reads and
    // rejects, and a hash, on which GET itself fails.
    let (junk, hashed) = (ClientKey::from(7_u128), ClientKey::from(9_u128));
    let junk_key = RedisLimiter::bucket_keys(&junk, &policy).remove(0);
    let hash_key = RedisLimiter::bucket_keys(&hashed, &policy).remove(0);
    let mut raw = redis_server.raw().await;
    let () = redis::cmd("SET")
        .arg(&junk_key)
        .arg("not a bucket")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: u64 = redis::cmd("HSET")
        .arg(&hash_key)
        .arg("field")
        .arg("value")
        .query_async(&mut raw)
        .await
        .unwrap();
    reset_stats(&redis_server).await;

    let tasks: Vec<_> = (0..64u128)
        .map(|t| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move {
                let client = ClientKey::from(t);
                let mut results = Vec::new();
                for _ in 0..20 {
                    results.push(limiter.check(&client, &policy, 1).await);
                }
                (client, results)
            })
        })
        .collect();
    let mut checks = 0;
    for t in tasks {
        let (client, results) = t.await.unwrap();
        for (k, result) in (1..).zip(results) {
            checks += 1;
            let broken = if client == junk {
                Some(&junk_key)
            } else if client == hashed {
                Some(&hash_key)
            } else {
                None
            };
            match broken {
                Some(key) => {
                    let err = result.unwrap_err();
                    assert!(
                        !err.is_unavailable(),
                        "a broken key is not an outage: {err}"
                    );
                    assert!(
                        err.to_string().contains(key.as_str()),
                        "the error names the key: {err}"
                    );
                }
                // Every other client's checks count down exactly: none failed with a
                // broken neighbour, none spent tokens for a batch that failed.
                None => {
                    let decision = result.unwrap();
                    assert!(decision.allowed);
                    assert_eq!(decision.remaining, 1_000 - k, "{client}, check {k}");
                }
            }
        }
    }
    let calls = script_calls(&redis_server).await;
    assert!(
        calls < checks / 2,
        "{checks} checks took {calls} calls: the broken key never shared a batch"
    );
    let () = redis::cmd("GET")
        .arg(&junk_key)
        .query_async::<String>(&mut redis_server.raw().await)
        .await
        .map(|stored| assert_eq!(stored, "not a bucket", "the broken key was overwritten"))
        .unwrap();
    let kind: String = redis::cmd("TYPE")
        .arg(&hash_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(kind, "hash", "the hash was overwritten");
}

/// Blocks Redis for `ms` milliseconds with a busy script on `conn`, as a slow server would.
async fn hold_busy(mut conn: redis::aio::MultiplexedConnection, ms: u64) -> redis::RedisResult<()> {
    const BUSY: &str = "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] \
        repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1]) * 1000";
    conn.set_response_timeout(Duration::from_millis(ms) + Duration::from_secs(10));
    redis::cmd("EVAL")
        .arg(BUSY)
        .arg(0)
        .arg(ms)
        .query_async(&mut conn)
        .await
}

/// Returns once `busy`'s script is running: when Redis stops answering `PING` on `probe` (a
/// connection opened before, as a busy Redis takes no new one).
async fn until_busy(
    probe: &mut redis::aio::MultiplexedConnection,
    busy: &tokio::task::JoinHandle<redis::RedisResult<()>>,
) {
    loop {
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(probe);
        if tokio::time::timeout(Duration::from_millis(20), ping)
            .await
            .is_err()
        {
            return;
        }
        assert!(
            !busy.is_finished(),
            "Redis answered PING all through the busy script"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_whose_caller_gave_up_is_not_sent() {
    let redis_server = support::TestRedis::container().await;
    let mut config = RedisConfig::from_url(&redis_server.url);
    config.connections = 1; // every check on one connection: one in flight, the rest queued
    config.timeout = Duration::from_millis(50);
    let limiter = Arc::new(RedisLimiter::new(config).unwrap());
    let policy = policy("gave-up");
    let client = ClientKey::from(42_u128);
    // The script is cached in Redis: a check is one EVALSHA.
    limiter
        .check(&ClientKey::from(1_u128), &policy, 1)
        .await
        .unwrap();

    let busy_conn = redis_server.raw().await;
    let mut probe = redis_server.raw().await; // opened now: a busy Redis takes no connection
    let busy = tokio::spawn(hold_busy(busy_conn, 1_500));
    // It runs long enough that every check below has given up (50 ms) and been dropped well
    // before Redis is free again.
    until_busy(&mut probe, &busy).await;

    let checks: Vec<_> = (0..10)
        .map(|_| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move { limiter.check(&client, &policy, 1).await })
        })
        .collect();
    for check in checks {
        let err = check.await.unwrap().unwrap_err();
        assert!(err.is_unavailable(), "{err}");
    }
    busy.await.unwrap().unwrap();

    // The first check was on the wire when its caller gave up, and Redis ran it once it
    // was free; the nine queued behind it were never sent.
    let decision = limiter.check(&client, &policy, 1).await.unwrap();
    assert_eq!(
        decision.remaining,
        1_000 - 2,
        "tokens spent by abandoned checks"
    );
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// A container and a limiter of one connection on it, whose checks wait up to 5 s: still
/// waiting when a runtime they ran on ends.
fn one_connection(main: &tokio::runtime::Runtime) -> (support::TestRedis, Arc<RedisLimiter>) {
    let redis_server = main.block_on(support::TestRedis::container());
    let mut config = RedisConfig::from_url(&redis_server.url);
    config.connections = 1;
    config.timeout = Duration::from_secs(5);
    let limiter = Arc::new(RedisLimiter::new(config).unwrap());
    (redis_server, limiter)
}

/// An application may build its limiter once and use it from several runtimes, one of which
/// shuts down while checks wait on a connection: the connection must not stay taken by a
/// task that died with that runtime.
#[test]
fn checks_queued_in_a_runtime_that_shut_down_do_not_block_the_connection() {
    let main = runtime(2);
    let _context = main.enter(); // the container is removed on drop, from within a runtime
    let (redis_server, limiter) = one_connection(&main);
    let policy = policy("outlived");
    let client = ClientKey::from(5_u128);
    main.block_on(limiter.check(&client, &policy, 1)).unwrap();

    // Redis busy for a second, so that one check is in flight and the rest queue behind it.
    let (busy_conn, mut probe) =
        main.block_on(async { (redis_server.raw().await, redis_server.raw().await) });
    let busy = main.spawn(hold_busy(busy_conn, 1_000));
    let short = runtime(1);
    short.block_on(async {
        for _ in 0..10 {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move { limiter.check(&client, &policy, 1).await });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    drop(short); // its tasks are dropped: the one in flight, and the queue's sender

    main.block_on(async {
        busy.await.unwrap().unwrap();
        let ping = redis::cmd("PING");
        let _: String = ping.query_async(&mut probe).await.unwrap();
        let started = std::time::Instant::now();
        let decision = limiter.check(&client, &policy, 1).await;
        assert!(
            decision.is_ok(),
            "the connection stayed taken after its runtime shut down: {decision:?} after {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn checks_whose_batch_is_dropped_get_an_outage_not_a_bug() {
    let main = runtime(2);
    let _context = main.enter();
    let (redis_server, limiter) = one_connection(&main);
    let policy = policy("dropped");
    let client = ClientKey::from(6_u128);
    main.block_on(limiter.check(&client, &policy, 1)).unwrap();

    // The call in flight belongs to a runtime that shuts down; the checks queued behind it
    // belong to one that goes on, and must hear of it as an outage (a fallback then answers
    // them), not wait out their deadline or take it for a bug.
    let (busy_conn, mut probe) =
        main.block_on(async { (redis_server.raw().await, redis_server.raw().await) });
    let busy = main.spawn(hold_busy(busy_conn, 1_000));
    main.block_on(until_busy(&mut probe, &busy));
    let short = runtime(1);
    short.block_on(async {
        let (limiter, policy) = (limiter.clone(), policy.clone());
        tokio::spawn(async move { limiter.check(&client, &policy, 1).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            main.spawn(async move { limiter.check(&client, &policy, 1).await })
        })
        .collect();
    main.block_on(tokio::time::sleep(Duration::from_millis(50)));
    drop(short);
    main.block_on(async {
        for check in queued {
            let started = std::time::Instant::now();
            let err = check.await.unwrap().unwrap_err();
            assert!(err.is_unavailable(), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        busy.await.unwrap().unwrap();
    });
}
