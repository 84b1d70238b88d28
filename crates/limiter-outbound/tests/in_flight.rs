//! In-flight caps: never more outstanding requests than the cap, on one worker or across
//! the fleet; a place is held until the response body is read; a worker that dies holding
//! places loses them when their leases expire, and the others go on at the full cap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use limiter_core::RateLimiter;
use limiter_outbound::{OutboundConfig, Pacer};
use limiter_redis::{RedisConfig, RedisLimiter};
use limiter_test_support::TestRedis;
use support::*;

fn redis_pacer(config: &OutboundConfig, url: &str) -> Arc<Pacer> {
    let redis = Arc::new(RedisLimiter::new(RedisConfig::from_url(url)).unwrap());
    let limiter: Arc<dyn RateLimiter> = redis.clone();
    Arc::new(Pacer::with_redis(config, limiter, redis).unwrap())
}

async fn burst(
    client: &limiter_outbound::reqwest_middleware::ClientWithMiddleware,
    upstream: &Upstream,
    n: usize,
) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, url) = (client.clone(), upstream.url(&format!("/{i}")));
            tokio::spawn(async move {
                let response = client.get(url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_never_exceeds_its_cap() {
    let upstream = Upstream::start(10_000, 10_000, Duration::from_millis(50)).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nin_flight = 2\nquotas = [{ limit = 1000, period = \"1s\" }]\n",
        &upstream,
    );
    let client = client(memory_pacer(&config));
    burst(&client, &upstream, 10).await;
    assert_eq!(upstream.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(upstream.served.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_cap_through_redis() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start(10_000, 10_000, Duration::from_millis(40)).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nin_flight = 3\nquotas = [{ limit = 1000, period = \"1s\" }]\n",
        &upstream,
    );
    let clients: Vec<_> = (0..3)
        .map(|_| client(redis_pacer(&config, &redis.url)))
        .collect();
    let runs: Vec<_> = clients.iter().map(|c| burst(c, &upstream, 12)).collect();
    futures_join(runs).await;
    assert_eq!(upstream.served.load(Ordering::SeqCst), 36);
    assert_eq!(upstream.max_in_flight.load(Ordering::SeqCst), 3);
}

async fn futures_join<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    for h in handles {
        h.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_places_come_back_when_their_leases_expire() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start(10_000, 10_000, Duration::ZERO).await;
    let config = config(
        "lease_ttl = \"1s\"\n[[hosts]]\nhost = \"{host}\"\nin_flight = 2\nmax_delay = \"10s\"\nquotas = [{ limit = 1000, period = \"1s\" }]\n",
        &upstream,
    );
    let authority = upstream.authority();
    // A worker takes both places and dies holding them: its runtime ends, nothing is
    // released, nothing renews them.
    {
        let (config, url, authority) = (config.clone(), redis.url.clone(), authority.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let pacer = redis_pacer(&config, &url);
                for _ in 0..2 {
                    let turn = pacer.acquire(&authority, None).await.unwrap();
                    std::mem::forget(turn);
                }
            });
        })
        .join()
        .unwrap();
    }
    let pacer = redis_pacer(&config, &redis.url);
    let started = Instant::now();
    let first = pacer.acquire(&authority, None).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "the dead worker's places were free at once: {waited:?}"
    );
    assert!(waited <= Duration::from_secs(3), "{waited:?}");
    // Both places, as before.
    let second =
        tokio::time::timeout(Duration::from_millis(500), pacer.acquire(&authority, None)).await;
    assert!(second.is_ok(), "the second place did not come back");
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_is_held_until_the_response_body_is_read_or_dropped() {
    let upstream = Upstream::start(10_000, 10_000, Duration::ZERO).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nin_flight = 1\nmax_delay = \"200ms\"\nquotas = [{ limit = 1000, period = \"1s\" }]\n",
        &upstream,
    );
    let client = client(memory_pacer(&config));
    let unread = client.get(upstream.url("/a")).send().await.unwrap();
    // Its body is not read: the place is still taken.
    assert!(client.get(upstream.url("/b")).send().await.is_err());
    // Read to the end: free.
    assert_eq!(unread.text().await.unwrap(), "ok");
    let dropped = client.get(upstream.url("/c")).send().await.unwrap();
    drop(dropped);
    // Dropped unread: free too.
    assert_eq!(
        client
            .get(upstream.url("/d"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_its_lease_keeps_its_place() {
    let redis = TestRedis::start().await;
    let upstream = Upstream::start(10_000, 10_000, Duration::from_millis(2500)).await;
    let config = config(
        "lease_ttl = \"500ms\"\n[[hosts]]\nhost = \"{host}\"\nin_flight = 1\nmax_delay = \"10s\"\nquotas = [{ limit = 1000, period = \"1s\" }]\n",
        &upstream,
    );
    let (a, b) = (
        client(redis_pacer(&config, &redis.url)),
        client(redis_pacer(&config, &redis.url)),
    );
    let slow = tokio::spawn({
        let (a, url) = (a.clone(), upstream.url("/slow"));
        async move { a.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Five lease lifetimes later the first request is still out: the second waits for it.
    let started = Instant::now();
    assert_eq!(
        b.get(upstream.url("/next")).send().await.unwrap().status(),
        200
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    slow.await.unwrap();
    assert_eq!(upstream.max_in_flight.load(Ordering::SeqCst), 1);
}
