//! Below an HTTP cache, cache hits spend nothing: only requests that reach the network are
//! paced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_cache_reqwest::{Cache, CacheMode, HttpCache, HttpCacheOptions, MokaManager};
use limiter_outbound::OutboundLimit;
use limiter_outbound::reqwest_middleware::ClientBuilder;
use support::*;

#[tokio::test]
async fn cache_hits_spend_no_tokens() {
    let upstream = Upstream::start(1000, 1000, Duration::ZERO).await;
    let config = config(
        "[[hosts]]\nhost = \"{host}\"\nmax_delay = \"0s\"\nquotas = [{ limit = 2, period = \"1h\" }]\n",
        &upstream,
    );
    // The cache first, the limiter below it: only what the cache sends on is paced.
    let client = ClientBuilder::new(limiter_outbound::reqwest_outbound::Client::new())
        .with(Cache(HttpCache {
            mode: CacheMode::Default,
            manager: MokaManager::default(),
            options: HttpCacheOptions::default(),
        }))
        .with(OutboundLimit::new(memory_pacer(&config)))
        .build();
    for _ in 0..10 {
        let response = client
            .get(upstream.url("/cached/page"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(upstream.served.load(Ordering::SeqCst), 1);
    // One token left of two: one more page, then the budget is spent.
    assert_eq!(
        client
            .get(upstream.url("/other"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(client.get(upstream.url("/third")).send().await.is_err());
}
