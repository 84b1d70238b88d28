//! Three clients with limiters of their own share one budget per host through Redis:
//! configured at the upstream's rate they get no 429 and finish near the ideal time; a
//! `Retry-After` seen by one pauses all; Redis stopped mid-run costs no request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use limiter_core::RateLimiter;
use limiter_fallback::{Fallback, FallbackConfig};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_outbound::{OutboundConfig, Pacer};
use limiter_redis::{RedisConfig, RedisLimiter};
use limiter_test_support::TestRedis;
use support::*;

/// A pacer on Redis at `url` (its own connections, as a separate worker would have), with
/// memory standing in while Redis is down; pauses shared through the same Redis.
fn redis_pacer(config: &OutboundConfig, url: &str) -> Arc<Pacer> {
    let redis = Arc::new(RedisLimiter::new(RedisConfig::from_url(url)).unwrap());
    let fallback = Fallback::new(
        Arc::clone(&redis),
        Arc::new(MemoryLimiter::new(MemoryConfig::default()).unwrap()),
        FallbackConfig {
            deadline: Duration::from_millis(500),
            expected_workers: 3,
            ..FallbackConfig::default()
        },
    )
    .unwrap();
    let limiter: Arc<dyn RateLimiter> = Arc::new(fallback);
    Arc::new(Pacer::with_redis(config, limiter, redis).unwrap())
}

/// Fetches `urls` with `tasks` concurrent tasks per client, the URLs dealt round robin
/// over the clients; (statuses 200, 429, errors).
async fn fetch_all(
    clients: &[limiter_outbound::reqwest_middleware::ClientWithMiddleware],
    urls: Vec<String>,
    tasks: usize,
) -> (usize, usize, usize) {
    let urls = Arc::new(parking_lot::Mutex::new(urls));
    let mut handles = Vec::new();
    for client in clients {
        for _ in 0..tasks {
            let (client, urls) = (client.clone(), Arc::clone(&urls));
            handles.push(tokio::spawn(async move {
                let mut counts = (0, 0, 0);
                loop {
                    let Some(url) = urls.lock().pop() else {
                        return counts;
                    };
                    match client.get(url).send().await {
                        Ok(r) if r.status() == 200 => counts.0 += 1,
                        Ok(r) if r.status() == 429 => counts.1 += 1,
                        _ => counts.2 += 1,
                    }
                }
            }));
        }
    }
    let mut total = (0, 0, 0);
    for h in handles {
        let (a, b, c) = h.await.unwrap();
        total = (total.0 + a, total.1 + b, total.2 + c);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_at_the_upstreams_rate_get_no_429_and_finish_near_the_ideal_time() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start(100, 10, Duration::from_millis(2)).await;
    let config = config(
        r#"
        [[hosts]]
        host = "{host}"
        in_flight = 4
        quotas = [{ limit = 100, period = "1s", burst = 5 }]
        max_delay = "30s"
        "#,
        &upstream,
    );
    let clients: Vec<_> = (0..3)
        .map(|_| client(redis_pacer(&config, &redis.url)))
        .collect();
    let urls: Vec<String> = (0..500)
        .map(|i| upstream.url(&format!("/item/{i}")))
        .collect();
    let started = Instant::now();
    let (ok, too_many, errors) = fetch_all(&clients, urls, 4).await;
    let elapsed = started.elapsed();
    assert_eq!((ok, too_many, errors), (500, 0, 0));
    assert_eq!(upstream.refused.load(Ordering::SeqCst), 0);
    // 12 tasks, never more than the cap outstanding, as the upstream counted them.
    assert!(upstream.max_in_flight.load(Ordering::SeqCst) <= 4);
    // The client's burst at once, then 100 a second: 4.95 s. (Its burst is below the
    // upstream's, which leaves room for the network's jitter.)
    let ideal = Duration::from_secs_f64(495.0 / 100.0);
    assert!(
        elapsed <= ideal.mul_f64(1.1),
        "{elapsed:?} for an ideal {ideal:?}"
    );
    assert!(
        elapsed >= ideal.mul_f64(0.9),
        "faster than the limit: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_seen_by_one_client_pauses_every_client() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nquotas = [{ limit = 1000, period = \"1s\" }]\n",
        &upstream,
    );
    let (a, b) = (
        client(redis_pacer(&config, &redis.url)),
        client(redis_pacer(&config, &redis.url)),
    );
    upstream.pause_next.store(true, Ordering::SeqCst);
    assert_eq!(
        a.get(upstream.url("/pause")).send().await.unwrap().status(),
        429
    );
    // The pause is in Redis, under the host's key, expiring by itself.
    let mut conn = redis.raw().await;
    let ttl: i64 = limiter_redis::redis::cmd("PTTL")
        .arg(format!("rl:out:{{{}}}:paused", upstream.authority()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=1000).contains(&ttl), "{ttl}");
    let started = Instant::now();
    assert_eq!(
        b.get(upstream.url("/other")).send().await.unwrap().status(),
        200
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "b was not paused: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_costs_no_request() {
    let redis = TestRedis::container_on_fixed_port().await;
    let upstream = Upstream::start(10_000, 10_000, Duration::ZERO).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nquotas = [{ limit = 300, period = \"1s\" }]\n",
        &upstream,
    );
    let clients: Vec<_> = (0..3)
        .map(|_| client(redis_pacer(&config, &redis.url)))
        .collect();
    let urls: Vec<String> = (0..600).map(|i| upstream.url(&format!("/{i}"))).collect();
    let run = fetch_all(&clients, urls, 2);
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.container_handle().stop().await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        redis.container_handle().start().await.unwrap();
    };
    let ((ok, too_many, errors), ()) = tokio::join!(run, outage);
    assert_eq!((ok, too_many, errors), (600, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_seen_while_redis_was_down_is_shared_when_it_returns() {
    let redis = TestRedis::container_on_fixed_port().await;
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nquotas = [{ limit = 1000, period = \"1s\" }]\nmax_delay = \"30s\"\n",
        &upstream,
    );
    let (a, b) = (
        redis_pacer(&config, &redis.url),
        redis_pacer(&config, &redis.url),
    );
    let authority = upstream.authority();
    redis.container_handle().stop().await.unwrap();
    // A is told to pause for 8 s while Redis is away: only A knows.
    a.pause(
        &authority,
        std::time::SystemTime::now() + Duration::from_secs(8),
    )
    .await;
    redis.container_handle().start().await.unwrap();
    // Once Redis answers again, A's next look at the host shares its pause...
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shared =
            tokio::time::timeout(Duration::from_millis(100), a.acquire(&authority, None)).await;
        assert!(shared.is_err(), "A was not paused");
        let mut conn = redis.raw().await;
        let stored: Option<u64> = limiter_redis::redis::cmd("GET")
            .arg(format!("rl:out:{{{authority}}}:paused"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if stored.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the pause never reached Redis"
        );
    }
    // ...and B, which never saw the 429, waits too.
    let waited =
        tokio::time::timeout(Duration::from_millis(500), b.acquire(&authority, None)).await;
    assert!(waited.is_err(), "B was not paused");
}
