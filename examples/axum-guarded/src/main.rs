//! `cargo run -p axum-guarded`; `curl -i localhost:3000/me [-H 'x-api-key: demo-premium-key']`
use std::{net::SocketAddr, sync::Arc};

use axum::{Extension, Router, routing::get};
use limiter_core::{ClientKeyHasher, Tier};
use limiter_http::{ApiKeyOrIp, ApiKeys, ClientIp, RateLimitInfo, RateLimitLayer};
use limiter_memory::{MemoryConfig, MemoryLimiter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keys are stored by SHA-256; in production the hashes come from config, not source.
    let keys = ApiKeys::new().with_hash(&ApiKeys::hash_key("demo-premium-key"), Tier::Premium)?;
    let limits = RateLimitLayer::new(
        Arc::new(MemoryLimiter::new(MemoryConfig::default())?), // or Redis, or the Fallback
        ClientKeyHasher::new(b"use the same secret on every worker")?,
    )
    .identify(ApiKeyOrIp::new(keys, ClientIp::new()));

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/me",
            get(|Extension(info): Extension<RateLimitInfo>| async move {
                let left = info.decision.map(|d| d.remaining);
                format!("tier {}, {left:?} requests left\n", info.tier)
            }),
        )
        .layer(limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    // Record each connection's peer address: ClientIp reads it.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
