//! `--serve`: the guarded and unguarded routes of the layer comparison.

use std::net::SocketAddr;
use std::sync::Arc;

use limiter_core::{ClientKeyHasher, Quota, Tier, TierPolicies};
use limiter_memory::{MemoryConfig, MemoryLimiter};

/// `GET /` answering "ok", behind the rate-limit layer or not: the two sides of the
/// guarded-vs-unguarded comparison. The anonymous tier admits a billion per second, so
/// every request does the whole check and is served.
pub(crate) async fn serve(
    addr: SocketAddr,
    guarded: bool,
    static_headers: bool,
) -> Result<(), String> {
    use axum::Router;
    use axum::routing::get;

    let mut app = if static_headers {
        // What the guarded route sends for the same quota, as fixed strings.
        Router::new().route(
            "/",
            get(|| async {
                (
                    [
                        ("x-ratelimit-limit", "1000000000"),
                        ("x-ratelimit-remaining", "999999999"),
                        ("x-ratelimit-reset", "1"),
                        ("ratelimit-policy", "\"anonymous\";q=1000000000;w=1"),
                        ("ratelimit", "\"anonymous\";r=999999999;t=1"),
                    ],
                    "ok",
                )
            }),
        )
    } else {
        Router::new().route("/", get(|| async { "ok" }))
    };
    if guarded {
        let mut tiers = TierPolicies::default();
        let quota = Quota::per_second(1_000_000_000).map_err(|e| e.to_string())?;
        tiers
            .set(Tier::Anonymous, [quota])
            .map_err(|e| e.to_string())?;
        let limiter =
            Arc::new(MemoryLimiter::new(MemoryConfig::default()).map_err(|e| e.to_string())?);
        let hasher =
            ClientKeyHasher::new(b"limiter-bench serve secret").map_err(|e| e.to_string())?;
        app = app.layer(limiter_http::RateLimitLayer::new(limiter, hasher).tiers(tiers));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    eprintln!(
        "limiter-bench: serving GET / on {addr} ({})",
        match (guarded, static_headers) {
            (true, _) => "guarded",
            (false, true) => "unguarded, with fixed rate-limit headers",
            (false, false) => "unguarded",
        }
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|e| e.to_string())
}
