//! With Redis gone the backend answers "unavailable" within its deadline; it never hangs.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::time::{Duration, Instant};

use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
use limiter_redis::{RedisConfig, RedisLimiter};

fn policy() -> Policy {
    Policy::new("outage", [Quota::per_second(100).unwrap()]).unwrap()
}

/// Generous slack over the deadline for a loaded machine: the point is "bounded", not "fast".
const SLACK: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_redis_is_unavailable_within_the_deadline() {
    let redis = support::TestRedis::container().await;
    let limiter = redis.limiter();
    let deadline = limiter.config().timeout;
    assert!(
        limiter
            .check(&ClientKey::from(1), &policy(), 1)
            .await
            .unwrap()
            .allowed
    );

    redis.container_handle().stop().await.unwrap();
    for i in 0..5 {
        let started = Instant::now();
        let err = limiter
            .check(&ClientKey::from(1), &policy(), 1)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(err.is_unavailable(), "check {i}: {err} is not an outage");
        assert!(took <= deadline + SLACK, "check {i} took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_times_out_at_the_deadline() {
    let redis = support::TestRedis::container().await;
    let mut config = RedisConfig::from_url(&redis.url);
    config.timeout = Duration::from_millis(100);
    let limiter = RedisLimiter::new(config).unwrap();
    limiter.warm_up().await.unwrap();

    // A paused container keeps its connections open and answers nothing.
    redis.container_handle().pause().await.unwrap();
    for i in 0..3 {
        let started = Instant::now();
        let err = limiter
            .check(&ClientKey::from(2), &policy(), 1)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(err.is_unavailable(), "check {i}: {err} is not an outage");
        assert!(
            took <= Duration::from_millis(100) + SLACK,
            "check {i} took {took:?}"
        );
    }
    redis.container_handle().unpause().await.unwrap();
    // And once Redis answers again, so does the limiter.
    let mut recovered = false;
    for _ in 0..50 {
        if limiter
            .check(&ClientKey::from(2), &policy(), 1)
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        recovered,
        "the limiter did not recover after Redis came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_unavailable_at_once() {
    // A port with no server: refused at once, classified as an outage.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let limiter =
        RedisLimiter::new(RedisConfig::from_url(format!("redis://127.0.0.1:{port}"))).unwrap();
    let started = Instant::now();
    let err = limiter
        .check(&ClientKey::from(3), &policy(), 1)
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() <= limiter.config().timeout + SLACK);
}

/// Connections Redis has accepted since it started.
async fn connections_received(redis: &support::TestRedis) -> u64 {
    let info: String = limiter_redis::redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut redis.raw().await)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("total_connections_received:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_at_a_short_deadline_replaces_its_connection() {
    // A deadline shorter than the old fixed 10 ms stall threshold: a connection stuck behind
    // a partition must still be found stalled and replaced, or every later call on it hangs.
    let redis = support::TestRedis::container().await;
    let mut config = RedisConfig::from_url(&redis.url);
    config.connections = 1;
    config.timeout = Duration::from_millis(5);
    let limiter = RedisLimiter::new(config).unwrap();
    // Connecting, a PING and the probe's script within 5 ms: usually at once, and among a few
    // hundred tries on a loaded machine.
    let ready = async {
        for _ in 0..500 {
            if limiter.warm_up().await.is_ok() {
                return true;
            }
        }
        false
    };
    assert!(ready.await, "never warmed up within 5 ms in 500 tries");
    let before = connections_received(&redis).await;

    redis.container_handle().pause().await.unwrap();
    let err = limiter
        .check(&ClientKey::from(4), &policy(), 1)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    redis.container_handle().unpause().await.unwrap();

    let mut answered = false;
    for _ in 0..100 {
        if limiter
            .check(&ClientKey::from(4), &policy(), 1)
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "no answer after Redis came back");
    let after = connections_received(&redis).await;
    // `connections_received` opens one connection of its own each time.
    assert!(
        after > before + 1,
        "the stalled connection was kept: {before} connections before, {after} after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_key_holding_something_else_does_not_keep_redis_out() {
    // The probe's own key is `rl:{probe}:write:v2`; should it ever hold something other than a
    // bucket, the probe clears it instead of failing for ever (a fallback's circuit would
    // never close).
    let redis = support::TestRedis::container().await;
    let mut raw = redis.raw().await;
    let _: () = limiter_redis::redis::cmd("HSET")
        .arg(&["rl:{probe}:write:v2", "field", "value"])
        .query_async(&mut raw)
        .await
        .unwrap();
    redis.limiter().ping().await.unwrap();
}
