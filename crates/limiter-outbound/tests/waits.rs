//! Bounded waits on one worker: a turn that would come after `max_delay` is a typed error
//! and the request is never sent; waiters are served in arrival order; a remote's
//! `Retry-After` pauses the host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use limiter_outbound::Role;
use limiter_outbound::reqwest_middleware;
use support::*;

#[tokio::test]
async fn a_turn_beyond_max_delay_is_a_typed_error_and_nothing_is_sent() {
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        r#"
        [[hosts]]
        host = "{host}"
        quotas = [{ limit = 1, period = "10s" }]
        max_delay = "200ms"
        "#,
        &upstream,
    );
    let client = client(memory_pacer(&config));
    assert_eq!(
        client
            .get(upstream.url("/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let started = Instant::now();
    let error = client.get(upstream.url("/b")).send().await.unwrap_err();
    // At once, not after max_delay: the next token is ten seconds away.
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("not the middleware's error: {error}");
    };
    let wait = error
        .downcast_ref::<limiter_outbound::OutboundError>()
        .and_then(|e| match e {
            limiter_outbound::OutboundError::TooLongWait(w) => Some(w.clone()),
            _ => None,
        })
        .expect("a TooLongWait");
    assert_eq!(wait.host, upstream.authority());
    assert_eq!(wait.max_delay, Duration::from_millis(200));
    assert!(
        wait.retry_after.unwrap() > Duration::from_secs(9),
        "{wait:?}"
    );
    assert!(wait.to_string().contains(&upstream.authority()), "{wait}");
    // Never sent.
    assert_eq!(upstream.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        r#"
        [[hosts]]
        host = "{host}"
        quotas = [{ limit = 20, period = "1s", burst = 1 }]
        max_delay = "5s"
        "#,
        &upstream,
    );
    let client = client(memory_pacer(&config));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, url) = (client.clone(), upstream.url(&format!("/{i}")));
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
        // Arrivals a little apart, each well before the one ahead is served (50 ms apart).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let order = upstream.order.lock().clone();
    let expected: Vec<String> = (0..8).map(|i| format!("/{i}")).collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn roles_have_quotas_of_their_own_within_the_hosts() {
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        r#"
        [[hosts]]
        host = "{host}"
        quotas = [{ limit = 3, period = "1h" }]
        max_delay = "0s"
        [[hosts.roles]]
        role = "artifact"
        quotas = [{ limit = 1, period = "1h" }]
        paths = ["/download/"]
        "#,
        &upstream,
    );
    let client = client(memory_pacer(&config));
    let status = |r: Result<
        limiter_outbound::reqwest_outbound::Response,
        reqwest_middleware::Error,
    >| r.map(|r| r.status().as_u16()).unwrap_or(0);
    // One artifact by path, then none more by path or by extension; the host's budget is
    // untouched by the refused ones.
    assert_eq!(
        status(client.get(upstream.url("/download/1")).send().await),
        200
    );
    assert_eq!(
        status(client.get(upstream.url("/download/2")).send().await),
        0
    );
    assert_eq!(
        status(
            client
                .get(upstream.url("/x"))
                .with_extension(Role::new("artifact"))
                .send()
                .await
        ),
        0
    );
    assert_eq!(
        status(client.get(upstream.url("/page/1")).send().await),
        200
    );
    assert_eq!(
        status(client.get(upstream.url("/page/2")).send().await),
        200
    );
    assert_eq!(status(client.get(upstream.url("/page/3")).send().await), 0);
    assert_eq!(upstream.served.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retry_after_pauses_the_host() {
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nquotas = [{ limit = 1000, period = \"1s\" }]\n",
        &upstream,
    );
    let client = client(memory_pacer(&config));
    upstream.pause_next.store(true, Ordering::SeqCst);
    assert_eq!(
        client
            .get(upstream.url("/pause"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    let started = Instant::now();
    assert_eq!(
        client
            .get(upstream.url("/next"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_already_needs_too_long_fails_at_once_with_the_wait() {
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nquotas = [{ limit = 2, period = \"1s\" }]\nmax_delay = \"1s\"\n",
        &upstream,
    );
    let pacer = memory_pacer(&config);
    let authority = upstream.authority();
    // Two turns at once (the burst), then one every half second: 2 more fit in a second.
    let mut waiting = Vec::new();
    for _ in 0..6 {
        let (pacer, authority) = (pacer.clone(), authority.clone());
        waiting.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = pacer.acquire(&authority, None).await.map(|_| ());
            (result, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut refused = 0;
    for w in waiting {
        let (result, took) = w.await.unwrap();
        if let Err(limiter_outbound::OutboundError::TooLongWait(e)) = result {
            refused += 1;
            // At once, and saying how long it would have been.
            assert!(took < Duration::from_millis(300), "{took:?}");
            assert!(
                e.retry_after.is_some_and(|w| w > Duration::from_secs(1)),
                "{e}"
            );
        }
    }
    assert!((1..=2).contains(&refused), "{refused}");
}
