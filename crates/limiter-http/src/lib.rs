//! A tower middleware that rate-limits HTTP requests by client and tier, for axum and hyper.
//!
//! Each request is identified ([`Identify`]: an API key looked up by hash, or the client's
//! address, trusting forwarding headers only from configured proxies), its tier's policy is
//! checked with any [`RateLimiter`](limiter_core::RateLimiter) (memory, Redis, or the
//! fallback between them), and then:
//! - **allowed**: the inner service answers, and the response carries `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until the bucket is full) and the
//!   draft-ietf-httpapi-ratelimit-headers-10 fields `RateLimit-Policy` and `RateLimit`;
//! - **denied**: `429 Too Many Requests` with the same fields, `Retry-After` (whole seconds,
//!   rounded up, equal to `RateLimit`'s `t`) and an RFC 9457 `application/problem+json` body;
//! - **unlimited** (the admin tier): served without asking any backend;
//! - **the limiter cannot decide**: served ([`OnError::Allow`], the default) or `503`
//!   ([`OnError::Deny`]); never a 500.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//!
//! use axum::{Router, routing::get};
//! use limiter_core::{ClientKeyHasher, Tier};
//! use limiter_http::{ApiKeyOrIp, ApiKeys, ClientIp, RateLimitLayer};
//! use limiter_memory::{MemoryConfig, MemoryLimiter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = ApiKeys::new().with_hash(&ApiKeys::hash_key("k-0123456789abcdef"), Tier::Premium)?;
//! let layer = RateLimitLayer::new(
//!     Arc::new(MemoryLimiter::new(MemoryConfig::default())?),
//!     ClientKeyHasher::new(b"the deployment's shared secret")?,
//! )
//! .identify(ApiKeyOrIp::new(keys, ClientIp::new()));
//!
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(layer);
//! // Serve it with the peer address recorded, which ClientIp reads:
//! let _service = app.into_make_service_with_connect_info::<SocketAddr>();
//! # Ok(())
//! # }
//! ```

mod body;
mod future;
mod headers;
mod identify;
mod layer;
mod problem;
mod response;
mod service;
pub mod telemetry;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use headers::{
    RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
    insert_rate_limit_headers,
};
pub use identify::{
    ApiKeyOrIp, ApiKeys, ClientIp, DEFAULT_API_KEY_HEADER, DEFAULT_IPV4_PREFIX,
    DEFAULT_IPV6_PREFIX, ForwardedHeader, Identify, Identity, InvalidKeyHash, Rejection,
    UnknownKey,
};
pub use layer::{OnError, RateLimitLayer};
pub use problem::{problem, too_many_requests};
pub use service::{RateLimit, RateLimitInfo};
