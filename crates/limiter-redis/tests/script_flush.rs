//! `SCRIPT FLUSH` while checks are running costs zero errors: NOSCRIPT is answered by
//! sending the check again with the script itself (`EVAL`), which caches it again.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
use limiter_redis::redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_costs_no_errors() {
    let redis_server = support::TestRedis::start().await;
    let limiter = Arc::new(redis_server.limiter());
    let policy = Arc::new(Policy::new("flush", [Quota::per_second(1_000).unwrap()]).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..32u128)
        .map(|i| {
            let (limiter, policy, stop) = (limiter.clone(), policy.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match limiter.check(&ClientKey::from(i), &policy, 1).await {
                        Ok(_) => ok += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            })
        })
        .collect();

    let mut raw = redis_server.raw().await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut checks = 0;
    for t in tasks {
        let (ok, errors) = t.await.unwrap();
        assert!(errors.is_empty(), "errors after SCRIPT FLUSH: {errors:?}");
        checks += ok;
    }
    assert!(checks > 100, "only {checks} checks ran");
    let stats = redis_server.command_calls().await;
    let evals = stats
        .iter()
        .find(|(n, _)| n == "eval")
        .map_or(0, |(_, c)| *c);
    assert!(
        evals >= 2,
        "the script was never sent again ({evals} EVALs): the flushes did not bite"
    );
}
